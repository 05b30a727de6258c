"""Pareto front, the selection rule and the hypervolume on hand-made points."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from PIL import Image

from tuning.pareto import accuracy_se, hypervolume_2d, pareto_front, select
from tuning.plot import plot_front

MAJ, MIN = "val_majority_accuracy", "val_minority_accuracy"


def trial(trial_id, majority, minority, **extra):
    return {"trial_id": trial_id, MAJ: majority, MIN: minority, **extra}


def ids(frame_or_records):
    records = (frame_or_records.to_dict("records") if isinstance(frame_or_records, pd.DataFrame)
               else frame_or_records)
    return sorted(r["trial_id"] for r in records)


# ------------------------------------------------------------------ front


def test_dominated_points_removed():
    points = [
        trial("a", 0.70, 0.50),
        trial("b", 0.60, 0.60),
        trial("c", 0.65, 0.55),
        trial("d", 0.60, 0.50),  # dominated by a, b and c
        trial("e", 0.70, 0.45),  # dominated by a (equal majority, lower minority)
        trial("f", 0.55, 0.60),  # dominated by b (equal minority, lower majority)
    ]
    front = pareto_front(points)
    assert ids(front) == ["a", "b", "c"]
    # Sorted by majority ascending, the order the plot joins them in.
    assert list(front["trial_id"]) == ["b", "c", "a"]
    assert front.attrs["excluded"] == 0
    assert "trial_id" in front.columns  # other columns travel with the front


def test_identical_points_all_kept():
    points = [trial("a", 0.6, 0.6), trial("b", 0.6, 0.6), trial("c", 0.5, 0.5)]
    assert ids(pareto_front(points)) == ["a", "b"]


def test_nan_and_inf_excluded_and_counted():
    points = [
        trial("a", 0.6, 0.6),
        trial("nan", math.nan, 0.9),
        trial("inf", math.inf, 0.1),  # +inf would dominate everything if let in
        trial("ninf", 0.7, -math.inf),
        {"trial_id": "missing", MAJ: 0.99},  # no minority accuracy at all
    ]
    front = pareto_front(points)
    assert ids(front) == ["a"]
    assert front.attrs["excluded"] == 4


def test_front_of_dataframe_keeps_index_and_empty_input():
    frame = pd.DataFrame([trial("a", 0.5, 0.5), trial("b", 0.6, 0.6)], index=[10, 20])
    assert list(pareto_front(frame).index) == [20]
    empty = pareto_front([])
    assert empty.empty and empty.attrs["excluded"] == 0


def test_missing_objective_column_is_named():
    with pytest.raises(ValueError, match="val_minority_accuracy"):
        pareto_front([{"trial_id": "a", MAJ: 0.5}])


# ------------------------------------------------------------------ selection

# A front of four plus one dominated trial; vanilla's majority accuracy is 0.652.
FRONT = [
    trial("t1", 0.700, 0.500),
    trial("t2", 0.660, 0.560),
    trial("t3", 0.645, 0.580),
    trial("t4", 0.600, 0.620),
    trial("t5", 0.640, 0.550),  # dominated by t3
]


def test_select_highest_minority_meeting_constraint():
    result = select(FRONT, baseline_majority=0.652)
    assert result.met_constraint
    assert result.chosen["trial_id"] == "t2"  # t3 has more minority but 0.645 < 0.652
    assert result.closest is None
    assert ids(result.front) == ["t1", "t2", "t3", "t4"]
    assert result.threshold == pytest.approx(0.652)
    assert "0.6520" in result.rule and "t2" in result.message


def test_select_epsilon_admits_lower_majority():
    assert select(FRONT, baseline_majority=0.652, epsilon=0.01).chosen["trial_id"] == "t3"
    assert select(FRONT, baseline_majority=0.652, epsilon=0.06).chosen["trial_id"] == "t4"


def test_select_boundary_is_inclusive_despite_float_error():
    # 0.7 - 0.1 == 0.6000000000000001 in floating point; a trial at 0.6 still qualifies.
    result = select([trial("x", 0.6, 0.9), trial("y", 0.7, 0.1)],
                    baseline_majority=0.7, epsilon=0.1)
    assert result.chosen["trial_id"] == "x"


def test_select_ties_higher_majority_then_lowest_trial_id():
    # Equal minority: c (lower majority) is dominated; a and b are identical, so the
    # lowest trial_id decides.
    tied = [trial("b", 0.7, 0.6), trial("a", 0.7, 0.6), trial("c", 0.65, 0.6)]
    assert select(tied, baseline_majority=0.6).chosen["trial_id"] == "a"
    numeric = [trial(10, 0.7, 0.6), trial(9, 0.7, 0.6)]
    assert select(numeric, baseline_majority=0.6).chosen["trial_id"] == 9  # 9 < 10 as numbers


def test_select_without_trial_id_uses_row_order():
    rows = [{MAJ: 0.7, MIN: 0.6, "lam": 2.0}, {MAJ: 0.7, MIN: 0.6, "lam": 1.0}]
    assert select(rows, baseline_majority=0.5).chosen["lam"] == 2.0


def test_select_none_meets_constraint():
    result = select(FRONT, baseline_majority=0.75)
    assert result.chosen is None and not result.met_constraint
    assert result.closest["trial_id"] == "t1"  # 0.05 short, the smallest shortfall
    assert "no trial met the constraint" in result.message
    assert "t1" in result.message and "0.0500 short" in result.message


def test_select_closest_tie_falls_to_lowest_trial_id():
    # Identical majority on the front requires identical minority too (else one dominates),
    # so the tie falls to trial_id.
    result = select([trial("b", 0.6, 0.5), trial("a", 0.6, 0.5), trial("c", 0.5, 0.7)],
                    baseline_majority=0.9)
    assert result.closest["trial_id"] == "a"


def test_select_counts_excluded_and_handles_all_nan():
    result = select(FRONT + [trial("bad", math.nan, math.nan)], baseline_majority=0.652)
    assert result.chosen["trial_id"] == "t2" and result.excluded == 1
    assert "1 trial(s) with NaN/inf" in result.message
    empty = select([trial("bad", math.nan, 0.5)], baseline_majority=0.6)
    assert empty.chosen is None and empty.closest is None and empty.front == []
    assert "no trial has finite objectives" in empty.message


def test_select_rejects_bad_arguments():
    with pytest.raises(ValueError, match="epsilon"):
        select(FRONT, baseline_majority=0.6, epsilon=-0.1)
    with pytest.raises(ValueError, match="baseline_majority"):
        select(FRONT, baseline_majority=math.nan)


# ------------------------------------------------------------------ hypervolume


def test_hypervolume_hand_made_fronts():
    assert hypervolume_2d([(1, 1)]) == pytest.approx(1.0)
    assert hypervolume_2d([(1, 2), (2, 1)]) == pytest.approx(3.0)
    # 3 rectangles: x∈[0,1]×y∈[0,3] ∪ [0,2]×[0,2] ∪ [0,3]×[0,1] -> 3 + 2 + 1 = 6
    assert hypervolume_2d([(1, 3), (2, 2), (3, 1)]) == pytest.approx(6.0)


def test_hypervolume_ignores_dominated_duplicate_and_nonfinite_points():
    base = hypervolume_2d([(1, 2), (2, 1)])
    noisy = [(1, 2), (2, 1), (0.5, 0.5), (1, 1), (2, 1), (math.nan, 5), (math.inf, 1)]
    assert hypervolume_2d(noisy) == pytest.approx(base)


def test_hypervolume_reference_and_trial_records():
    # Relative to (0.5, 0.5): 0.5×1.5 + 1.5×0.5 − the 0.5×0.5 overlap = 1.25
    assert hypervolume_2d([(1, 2), (2, 1)], reference=(0.5, 0.5)) == pytest.approx(1.25)
    assert hypervolume_2d([(0.4, 3)], reference=(0.5, 0.5)) == 0.0  # not beyond the reference
    assert hypervolume_2d([]) == 0.0
    records = [trial("a", 0.6, 0.5), trial("b", 0.5, 0.6)]
    assert hypervolume_2d(records) == pytest.approx(0.6 * 0.5 + 0.5 * 0.1)
    assert hypervolume_2d(pd.DataFrame(records)) == pytest.approx(0.35)


# ------------------------------------------------------------------ plot


def test_plot_front_writes_png(tmp_path):
    trials = pd.DataFrame(FRONT)
    result = select(trials, baseline_majority=0.652)
    path = str(tmp_path / "plots" / "front.png")
    baselines = {"vanilla": (0.652, 0.56), "reweight": (0.647, 0.59),
                 "groupdro": (0.64, 0.57), "fairness_penalty": (0.65, 0.565)}
    assert plot_front(trials, pd.DataFrame(result.front), result.chosen, baselines, path,
                      threshold=result.threshold) == path
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100
    # No chosen trial and an empty front still draw.
    empty_path = str(tmp_path / "empty.png")
    plot_front(trials.iloc[:0], trials.iloc[:0], None, {}, empty_path)
    with Image.open(empty_path) as image:
        assert image.format == "PNG"


# ------------------------------------------------------------------ rules validation can trust


def _noisy_front():
    """Baseline majority 0.80 (ε 0): t0 fails the constraint; t1..t4 are the front members
    that meet it, minority 0.70 (maj 0.86), 0.72 (0.84), 0.74 (0.82), 0.75 (0.81); t5 is
    dominated by t3."""
    return [trial("t0", 0.78, 0.80), trial("t1", 0.86, 0.70), trial("t2", 0.84, 0.72),
            trial("t3", 0.82, 0.74), trial("t4", 0.81, 0.75), trial("t5", 0.80, 0.73)]


def test_accuracy_se_binomial_and_by_user():
    """[1, 1, 0, 0]: p = 0.5. Binomial √(0.25/4) = 0.25. Users [a, a, b, b]: residual sums
    +1, −1; √(2/1 · 2)/4 = 0.5 (two users' rows move together). Users [a, b, a, b]: sums 0, 0
    → 0. One user: binomial."""
    correct = [1, 1, 0, 0]
    assert accuracy_se(correct) == pytest.approx(0.25)
    assert accuracy_se(correct, ["a", "a", "b", "b"]) == pytest.approx(0.5)
    assert accuracy_se(correct, ["a", "b", "a", "b"]) == pytest.approx(0.0)
    assert accuracy_se(correct, ["a"] * 4) == pytest.approx(0.25)
    assert math.isnan(accuracy_se([]))


def test_one_se_rule_takes_the_most_conservative_trial_within_one_se():
    """best: t4 (0.75). SE 0.021: the band is minority ≥ 0.729 → t3, t4; the highest majority of
    those is t3. SE 0.04 → ≥ 0.71: t2. se_multiplier 2 with SE 0.021 → ≥ 0.708: t2 too."""
    trials = _noisy_front()
    assert select(trials, baseline_majority=0.80).chosen["trial_id"] == "t4"
    picked = select(trials, baseline_majority=0.80, rule="one_se", minority_se=0.021)
    assert picked.chosen["trial_id"] == "t3" and "within 1 SE (0.0210)" in picked.rule
    assert select(trials, baseline_majority=0.80, rule="one_se",
                  minority_se=0.04).chosen["trial_id"] == "t2"
    assert select(trials, baseline_majority=0.80, rule="one_se", minority_se=0.021,
                  se_multiplier=2.0).chosen["trial_id"] == "t2"
    # SE 0: the best itself; the constraint still applies (t0 never).
    assert select(trials, baseline_majority=0.80, rule="one_se",
                  minority_se=0.0).chosen["trial_id"] == "t4"


def test_beat_default_rule_keeps_the_default_weights_unless_beaten_by_more_than_one_se():
    """The best meeting the constraint is t4 (0.75). Default at 0.73 with SE 0.03: +0.02 is not
    more than 0.03 → kept, nothing chosen. SE 0.01: +0.02 > 0.01 → t4."""
    trials = _noisy_front()
    kept = select(trials, baseline_majority=0.80, rule="beat_default", minority_se=0.03,
                  default=(0.82, 0.73))
    assert kept.chosen is None and kept.kept_default and kept.met_constraint
    assert "kept the default weights" in kept.message and "t4" in kept.message
    beaten = select(trials, baseline_majority=0.80, rule="beat_default", minority_se=0.01,
                    default=(0.82, 0.73))
    assert beaten.chosen["trial_id"] == "t4" and not beaten.kept_default


def test_rules_refuse_missing_inputs():
    trials = _noisy_front()
    with pytest.raises(ValueError, match="one of"):
        select(trials, baseline_majority=0.8, rule="median")
    with pytest.raises(ValueError, match="minority_se"):
        select(trials, baseline_majority=0.8, rule="one_se")
    with pytest.raises(ValueError, match="default weights"):
        select(trials, baseline_majority=0.8, rule="beat_default", minority_se=0.01)
    with pytest.raises(ValueError, match="se_multiplier"):
        select(trials, baseline_majority=0.8, rule="one_se", minority_se=0.01, se_multiplier=0)


@pytest.mark.parametrize("override,key", [("tune.selection=median", "tune.selection"),
                                          ("tune.selection_se_multiplier=0",
                                           "tune.selection_se_multiplier")])
def test_bad_selection_settings_are_config_errors_naming_the_key(override, key):
    from pafo_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])
