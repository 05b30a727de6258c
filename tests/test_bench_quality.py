"""The quality suite's arithmetic: the oracle twin's closed share and its table cell, and the
bar's verdict, on hand-made metrics."""

from __future__ import annotations

import numpy as np
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
    assert row.endswith("| – | closed 25% / 50%; minority teacher 70.0 vs 60.0 |")
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


def test_diagnostics_table_gets_the_grouping_cell():
    run = {"dataset": "dsp", "seed": 0, "metrics": metrics(vanilla=(0.6, 0.7)),
           "diagnostics": {"grouping": {
               "run": {"purity": 0.75, "recall": 0.9, "users": 120, "minority_type_users": 100},
               "ceiling": {"purity": 0.82, "recall": 0.82, "users": 100,
                           "minority_type_users": 100, "rows_per_user": 11.0}}}}
    lines = render_diagnostics([run])
    assert lines[-1].endswith("| 75.0 / 90.0 (120 users) → 82.0 at 100; 11 rows a user | – |")
    assert lines[-1].count("|") == lines[-2].count("|")
    run["diagnostics"]["placement"] = {"purity": 0.94, "minority_type_users": 100}
    assert render_diagnostics([run])[-1].endswith(
        "| 75.0 / 90.0 (120 users) → 82.0 at 100; true features 94.0; 11 rows a user | – |")


def test_grouping_ceiling_on_planted_users():
    """Two types with opposite population vectors on one base reward: with 12 clean rows a
    user every user is placed by its rows (purity 1); with 1 row a user and half the rows
    against the type, placement is a coin toss for those users and purity falls."""
    import numpy as np
    import torch

    from benchmarks.diagnostics import grouping_ceiling

    rng = np.random.default_rng(0)
    truth = np.arange(40) < 10  # 10 minority-type users of 40
    sign = np.where(truth, -1.0, 1.0)

    def rows(per_user, flip):
        users = np.repeat(np.arange(40), per_user)
        x = np.abs(rng.normal(1.0, 0.2, len(users))) * sign[users]
        x[rng.random(len(users)) < flip] *= -1
        return torch.tensor(x[:, None]), torch.tensor(users)

    clean = grouping_ceiling(*rows(12, 0.0), truth, l2=1e-3)
    assert clean["purity"] == clean["recall"] == 1.0
    assert clean["users"] == clean["minority_type_users"] == 10 and clean["rows_per_user"] == 12
    noisy = grouping_ceiling(*rows(1, 0.4), truth, l2=1e-3)
    assert noisy["users"] == 10 and noisy["purity"] < 0.9
    # a user without rows counts in neither share
    x, users = rows(12, 0.0)
    keep = users != 0
    assert grouping_ceiling(x[keep], users[keep], truth, l2=1e-3)["minority_type_users"] == 9


def test_type_axis_sides_follow_the_simulators_modes():
    from benchmarks.diagnostics import type_axis

    # academy, business: the majority's; entertainment, literature: the minority's; normal: both
    assert type_axis(np.array([0, 1, 2, 3, 4, 2])).tolist() == [0, 0, 1, 1, -1, 1]


def test_axis_probe_reads_a_feature_that_knows_only_the_side():
    """Features that carry the type axis and nothing else: the 2-way probe reads it, the
    5-way probe cannot tell the two domains of a side apart (about 3 of 5 right)."""
    from benchmarks.diagnostics import probes

    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(5), 60)
    queries = np.repeat(np.arange(60), 5)
    side = np.array([0.0, 0.0, 1.0, 1.0, 0.5])[labels]
    features = np.stack([side, rng.normal(size=labels.size)], axis=1) + 0.01 * rng.normal(size=(labels.size, 2))
    out = probes(features, labels, queries)
    assert out["type_axis"] > 0.95
    assert out["accuracy"] < 0.75


def test_lexical_baseline_reads_domain_words():
    from benchmarks.diagnostics import lexical_features, probes

    words = ["research hypothesis empirical", "market revenue profit", "movie celebrity fun",
             "poem metaphor verse", "simple plain answer"]
    rng = np.random.default_rng(1)
    filler = ["the", "water", "city", "light", "river", "stone", "paper", "music"]
    texts, labels, queries = [], [], []
    for q in range(40):
        topic = " ".join(rng.choice(filler, 4))
        for d, w in enumerate(words):
            texts.append(f"{topic} {w} {topic}")
            labels.append(d)
            queries.append(q)
    x = lexical_features(texts, dim=32)
    assert x.shape == (200, 32)
    out = probes(x, np.array(labels), np.array(queries))
    assert out["accuracy"] > 0.9 and out["type_axis"] > 0.9


def test_probe_cell_shows_the_axis_and_the_lexical_baseline():
    from benchmarks.quality import _probe_text

    probe = {"frozen": {"accuracy": 0.4391, "type_axis": 0.7612},
             "adapted": {"accuracy": 0.5, "type_axis": None},
             "lexical": {"accuracy": 0.569, "type_axis": 0.802}}
    assert _probe_text(probe) == "43.9 (axis 76.1) → 50.0; lexical 56.9 (axis 80.2)"
    assert _probe_text({"frozen": {"accuracy": 0.44}}) == "44.0"
    assert _probe_text({}) == "–"


def test_placement_ceiling_by_hand():
    """Two features; the majority's mode weighs feature 0, the minority's feature 1. Users
    a, b (minority-type) and d (majority-type) each answered "1 over 0" five times, the rest
    "0 over 1": the three users most likely minority are a, b and d — 2 of 3 pure, with
    deterministic labels and with Bradley–Terry ones alike. c, a minority-type user who
    answers like the majority, cannot be found from its rows."""
    from benchmarks.diagnostics import placement_ceiling

    answers = {"a": 1, "b": 1, "c": 0, "d": 1, **{f"m{i}": 0 for i in range(6)}}
    user = np.repeat(list(answers), 5)
    chosen = np.array([answers[u] for u in user])
    kinds = {"a": True, "b": True, "c": True, **{u: False for u in answers if u not in "abc"}}
    modes = (np.array([0.9, 0.1]), np.array([0.1, 0.9]))
    for beta in (None, 4.0):
        out = placement_ceiling(chosen, 1 - chosen, user, kinds, modes, 10.0, beta, samples=2000)
        assert out["purity"] == pytest.approx(2 / 3)
        assert out["minority_type_users"] == 3 and out["rows_per_user"] == 5.0
    kinds["d"] = True  # 4 minority-type users: the group is a, b, d and, of the users tied
    out = placement_ceiling(chosen, 1 - chosen, user, kinds, modes, 10.0, None, samples=2000)
    assert out["purity"] == pytest.approx(1.0)  # below them, the first by id: c
    kinds["m0"], kinds["c"] = True, False  # now the first by id is majority-type
    out = placement_ceiling(chosen, 1 - chosen, user, kinds, modes, 10.0, None, samples=2000)
    assert out["purity"] == pytest.approx(3 / 4)
