"""The quality suite's arithmetic: the oracle twin's closed share and its table cell, and the
bar's verdict, on hand-made metrics."""

from __future__ import annotations

import pytest

from benchmarks.quality import _oracle_text, oracle_twin, render_diagnostics, verdict


def metrics(**by_type) -> dict:
    """``name=(minority, majority)`` -> a metrics.json with those user-type accuracies."""
    return {"methods": {name: {"by": {"user_type": {"by_group": {"minority": lo, "majority": hi}}}}
                        for name, (lo, hi) in by_type.items()}}


def test_oracle_twin_closes_its_own_vanillas_gap():
    twin = {"metrics": metrics(vanilla=(0.60, 0.70), pafo=(0.66, 0.70), pafo_default=(0.58, 0.70)),
            "run": "/r/dsp-s0-oracle",
            "diagnostics": {"teachers": {"minority": {"val_own_group": 0.668,
                                                      "vanilla_on_group": 0.625}}}}
    out = oracle_twin({}, twin)
    assert out["vanilla_gap"] == pytest.approx(0.10)
    assert out["closed"]["pafo"] == pytest.approx(0.6)  # gap 0.10 -> 0.04
    assert out["closed"]["pafo_default"] == pytest.approx(-0.2)  # gap 0.10 -> 0.12
    assert _oracle_text(out) == "closed 60% / -20%; minority teacher 66.8 vs 62.5"
    assert _oracle_text(None) == "–"


def test_oracle_twin_without_a_gap_says_nothing_closed():
    out = oracle_twin({}, {"metrics": metrics(vanilla=(0.7, 0.7), pafo=(0.7, 0.7))})
    assert out["closed"] == {"pafo": None, "pafo_default": None}
    assert _oracle_text(out).startswith("closed – / –")


def test_diagnostics_table_gets_the_true_groups_cell():
    run = {"dataset": "dsp", "seed": 0, "metrics": metrics(vanilla=(0.6, 0.7)),
           "oracle": {"closed": {"pafo": 0.25, "pafo_default": 0.5}, "minority_teacher": 0.7,
                      "vanilla_on_minority": 0.6}}
    row = render_diagnostics([run])[-1]
    assert row.endswith("| closed 25% / 50%; minority teacher 70.0 vs 60.0 |")
    assert row.count("|") == render_diagnostics([run])[-2].count("|")  # as many cells as the rule


def test_verdict_needs_half_the_gap_the_majority_and_no_dominating_baseline():
    rows = {"vanilla": [{"minority": 0.60, "majority": 0.70}],
            "pafo": [{"minority": 0.66, "majority": 0.70}]}
    assert verdict(rows).startswith("bar (met): pafo closes 60%")
    rows["reweight"] = [{"minority": 0.67, "majority": 0.70}]
    assert "bar (not met)" in verdict(rows) and "dominated by reweight" in verdict(rows)
    del rows["reweight"]
    rows["pafo"] = [{"minority": 0.66, "majority": 0.69}]  # majority -1.0 point
    assert "bar (not met)" in verdict(rows)
