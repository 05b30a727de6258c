"""The selection benchmark's arithmetic on hand-made trials: the best-on-test bound, the
validation/test rank correlation, and the rows they add to the table."""

from __future__ import annotations

import math

import pytest

from benchmarks.selection import best_on_test, rank_corr, render

DEFAULT = {"minority": 0.60, "majority": 0.80}


def test_bound_takes_the_best_test_minority_within_the_majority_slack():
    tested = {"a": {"minority": 0.63, "majority": 0.796},   # 0.4 points below: kept
              "b": {"minority": 0.70, "majority": 0.79},    # 1 point below: not kept
              "c": {"minority": 0.61, "majority": 0.81}}
    bound = best_on_test(tested, DEFAULT)
    assert bound["trial"] == "a"
    assert bound["d_minority"] == pytest.approx(0.03)
    assert bound["d_majority"] == pytest.approx(-0.004)


def test_bound_is_the_default_when_no_trial_beats_it():
    tested = {"a": {"minority": 0.58, "majority": 0.85}, "b": {"minority": 0.70, "majority": 0.70}}
    bound = best_on_test(tested, DEFAULT)
    assert bound["trial"] == "default"
    assert bound["d_minority"] == 0.0 and bound["d_majority"] == 0.0
    assert best_on_test({}, DEFAULT)["trial"] == "default"


def test_rank_corr_by_hand():
    assert rank_corr([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_corr([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2, 3) vs (2, 1, 3): deviations (-1, 0, 1) and (0, -1, 1) -> 1 / 2
    assert rank_corr([0.1, 0.2, 0.3], [0.5, 0.4, 0.6]) == pytest.approx(0.5)
    assert math.isnan(rank_corr([1, 2], [1, 2]))
    assert math.isnan(rank_corr([1, 1, 1], [1, 2, 3]))


def test_render_adds_the_bound_and_its_summary_row():
    picks = {rule: {"trial": "default", "val": [0.8, 0.6], "test": DEFAULT,
                    "d_minority": 0.0, "d_majority": 0.0}
             for rule in ("best", "one_se", "beat_default")}
    picks["best"] = {"trial": "a", "val": [0.8, 0.65], "test": DEFAULT,
                     "d_minority": -0.01, "d_majority": 0.002}
    sel = {"default": {"val": [0.8, 0.6], "test": DEFAULT}, "minority_se": 0.015,
           "minority_binomial_se": 0.014, "trials": 3, "picks": picks,
           "test_best": {"trial": "c", "test": DEFAULT, "d_minority": 0.02, "d_majority": -0.001},
           "val_test_rank_corr": 0.25}
    text = render([{"dataset": "dsp", "seed": 1, "selection": sel}], "cmd")
    row = next(line for line in text.splitlines() if line.startswith("| dsp | 1 |"))
    assert row.endswith("| a, -1.0 / +0.2 | default, +0.0 / +0.0 | default, +0.0 / +0.0 "
                        "| +2.0 / -0.1 | +0.25 |")
    assert "| best | 0 of 1 | -1.00 | +0.20 |" in text
    assert "| best on test (a bound, not a rule) | 1 of 1 | +2.00 | -0.10 |" in text


def test_read_run_names_a_missing_run_and_takes_a_stale_runs_own_choices(tmp_path, capsys):
    from benchmarks.quality import read_run, run_config
    from pafo_ray.stages.base import StageContext

    with pytest.raises(SystemExit, match="builtin-80-s0.*no finished run of builtin-80 seed 0"):
        read_run("builtin-80", 0, 4, tmp_path)
    run_dir = StageContext.create(run_config("builtin-80", 0, 4, tmp_path)).run_dir
    run_dir.write_summary("regularize", {"config_updates": {"model": {"user_shrinkage": 0.21}}})
    run_dir.write_summary("evaluate", {})  # summaries without success markers: stale hashes
    ctx, stale = read_run("builtin-80", 0, 4, tmp_path)
    assert ctx.cfg.model.user_shrinkage == 0.21
    assert stale == ["regularize"]
    assert "stages regularize finished under another stage hash" in capsys.readouterr().err
