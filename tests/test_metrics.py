"""Hand-computed checks of pafo_ray.metrics.

The small frame used throughout (support groups are row labels; user d has one row, unseen):

    row user margin group     support_rate user_support user_type seen  outcome
    0   a     1.0  majority   0.90         0.8          majority  True  correct
    1   a    -1.0  majority   0.70         0.8          majority  True  wrong
    2   a     2.0  majority   0.95         0.8          majority  True  correct
    3   a     0.0  majority   0.65         0.8          majority  True  tie (not correct)
    4   b     3.0  minority   0.30         0.4          majority  True  correct
    5   b    -2.0  minority   0.10         0.4          majority  True  wrong
    6   c     0.5  majority   1.00         0.9          majority  True  correct
    7   d    -0.5  minority   0.35         NaN          minority  False wrong
"""

import time

import numpy as np
import pandas as pd
import pytest

from pafo_ray import bootstrap as B
from pafo_ray import comparison as C
from pafo_ray import metrics as M


@pytest.fixture
def small():
    return pd.DataFrame({
        "row_id": np.arange(8),
        "user_id": list("aaaabbcd"),
        "margin": [1.0, -1.0, 2.0, 0.0, 3.0, -2.0, 0.5, -0.5],
        "group": ["majority"] * 4 + ["minority"] * 2 + ["majority", "minority"],
        "support_rate": [0.9, 0.7, 0.95, 0.65, 0.3, 0.1, 1.0, 0.35],
        "user_support": [0.8] * 4 + [0.4] * 2 + [0.9, np.nan],
        "user_type": ["majority"] * 7 + ["minority"],
        "seen": [True] * 7 + [False],
    })


def random_frame(num_users=40, rows_per_user=6, seed=1):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(num_users), rng.integers(1, rows_per_user + 1, num_users))
    user_support = rng.uniform(0.2, 0.9, num_users)
    return pd.DataFrame({
        "row_id": np.arange(len(users)),
        "user_id": [f"u{u}" for u in users],
        "margin": rng.normal(0.3, 1.0, len(users)).round(1),  # rounding makes ties
        "group": np.where(rng.uniform(size=len(users)) < 0.3, "minority", "majority"),
        "support_rate": rng.uniform(0, 1, len(users)),
        "user_support": user_support[users],
        "user_type": np.where(users % 5 == 0, "minority", "majority"),
    })


def test_disaggregated_by_group(small):
    """majority rows 0,1,2,3,6 → 3/5 = 0.6; minority rows 4,5,7 → 1/3; overall 4/8 = 0.5;
    difference 0.6 - 1/3 = 0.266667; ratio (1/3) / 0.6 = 0.555556."""
    result = M.disaggregated(small, "group")
    assert result["overall"] == pytest.approx(0.5)
    assert result["by_group"] == pytest.approx({"minority": 1 / 3, "majority": 0.6})
    assert result["count"] == {"minority": 3, "majority": 5}
    assert result["group_min"] == pytest.approx(1 / 3)
    assert result["group_max"] == pytest.approx(0.6)
    assert result["difference"] == pytest.approx(0.6 - 1 / 3)
    assert result["ratio"] == pytest.approx(5 / 9)
    assert result["order"] == ["minority", "majority"]


def test_disaggregated_by_user_type_and_seen(small):
    """user_type: majority rows 0–6 → 4/7, minority row 7 → 0. seen: rows 0–6 → 4/7, unseen 0."""
    by_type = M.disaggregated(small, "user_type")
    assert by_type["by_group"] == pytest.approx({"minority": 0.0, "majority": 4 / 7})
    assert by_type["ratio"] == 0.0
    by_seen = M.disaggregated(small, "seen")
    assert by_seen["order"] == ["unseen", "seen"]
    assert by_seen["by_group"] == pytest.approx({"unseen": 0.0, "seen": 4 / 7})


def test_empty_named_group_is_an_error(small):
    majority_only = small[small["group"] == "majority"]
    with pytest.raises(ValueError, match=r"\['minority'\] have no scored rows"):
        M.disaggregated(majority_only, "group", groups=["minority", "majority"])
    with pytest.raises(ValueError, match="minority"):
        C.method_metrics(majority_only, groups=["minority", "majority"], bootstrap=0)
    with pytest.raises(ValueError, match=r"unexpected group\(s\) \['majority'\]"):
        M.disaggregated(small, "group", groups=["minority", "bucket_1"])


def test_nan_margin_is_an_error(small):
    small.loc[2, "margin"] = np.nan
    with pytest.raises(ValueError, match="1 of 8 scored rows have a NaN margin"):
        M.disaggregated(small, "group")


def test_per_user(small):
    """Per-user accuracy a 2/4, b 1/2, c 1/1, d 0/1 (one row) → [0.5, 0.5, 1, 0].
    mean 0.5; std (ddof 0) sqrt((0 + 0 + 0.25 + 0.25) / 4) = 0.353553; worst 0;
    p10: sorted [0, .5, .5, 1], h = 3·0.1 = 0.3 → 0 + 0.3·0.5 = 0.15."""
    result = M.per_user(small)
    assert result["mean"] == pytest.approx(0.5)
    assert result["std"] == pytest.approx(np.sqrt(0.125))
    assert result["worst"] == 0.0
    assert result["p10"] == pytest.approx(0.15)
    assert result["num_users"] == 4
    assert result["quantiles"]["p50"] == pytest.approx(0.5)


def test_bias_curve_with_empty_bucket(small):
    """5 bins: 0.1→0; 0.3, 0.35→1; none in [0.4, 0.6); 0.7, 0.65→3; 0.9, 0.95, 1.0→4 (closed).
    accuracies: bin0 0/1, bin1 1/2, bin2 None, bin3 0/2 (one wrong, one tie), bin4 3/3."""
    curve = M.bias_curve(small, buckets=5)
    assert [b["count"] for b in curve] == [1, 2, 0, 2, 3]
    assert [b["accuracy"] for b in curve] == [0.0, 0.5, None, 0.0, 1.0]
    assert curve[2]["lo"] == pytest.approx(0.4) and curve[2]["hi"] == pytest.approx(0.6)


def test_spearman_with_ties():
    """x = [1, 2, 2, 3] → ranks [1, 2.5, 2.5, 4]; y = [1, 3, 2, 2] → [1, 4, 2.5, 2.5].
    centred: dx = [-1.5, 0, 0, 1.5], dy = [-1.5, 1.5, 0, 0]; Σ dx dy = 2.25, Σ dx² = Σ dy² = 4.5
    → ρ = 2.25 / 4.5 = 0.5. A constant side → NaN."""
    assert M.spearman([1, 2, 2, 3], [1, 3, 2, 2]) == pytest.approx(0.5)
    assert M.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(M.spearman([1, 1, 1], [1, 2, 3]))


def test_user_support_spearman(small):
    """Users with known support: a (0.8, 0.5), b (0.4, 0.5), c (0.9, 1.0); d (NaN) dropped.
    support ranks b1 a2 c3; accuracy ranks a1.5 b1.5 c3; dx = [0, -1, 1], dy = [-.5, -.5, 1];
    ρ = 1.5 / sqrt(2 · 1.5) = 0.866025."""
    assert M.user_support_spearman(small) == pytest.approx(1.5 / np.sqrt(3))


def test_vectorised_statistics_match_point_functions(small):
    frame = random_frame()
    for df in (small, frame):
        table = B.user_table(df)
        spread = M.per_user(df)
        for kind in M.PER_USER_STATS:
            assert B.per_user_stat(kind).point(table) == pytest.approx(spread[kind])
        minority = df[df["user_type"] == "minority"]
        assert B.per_user_stat("p10", "user_type", "minority").point(table) == pytest.approx(
            M.per_user(minority)["p10"])
        assert B.accuracy_stat("group", "minority").point(table) == pytest.approx(
            M.disaggregated(df, "group")["by_group"]["minority"])
        assert B.spearman_stat().point(table) == pytest.approx(M.user_support_spearman(df))


@pytest.mark.parametrize("stat_name", ["accuracy", "gap", "std", "p10", "worst", "spearman"])
def test_fast_bootstrap_equals_generic_bootstrap(stat_name):
    """The vectorised path and the generic DataFrame path draw the same users, so they give
    the same interval; this checks the weighted (resample multiplicity) formulas. A resample
    without minority users is undefined (NaN) on both paths and left out of the interval."""
    df = random_frame(num_users=20)
    fast, slow = {
        "accuracy": (B.accuracy_stat("group", "minority"),
                     lambda d: M.disaggregated(d, "group")["by_group"].get("minority", np.nan)),
        "gap": (B.gap_stat("user_type", "minority", "majority"),
                lambda d: (lambda r: r.get("majority", np.nan) - r.get("minority", np.nan))(
                    M.disaggregated(d, "user_type")["by_group"])),
        "std": (B.per_user_stat("std"), lambda d: M.per_user(d)["std"]),
        "p10": (B.per_user_stat("p10"), lambda d: M.per_user(d)["p10"]),
        "worst": (B.per_user_stat("worst"), lambda d: M.per_user(d)["worst"]),
        "spearman": (B.spearman_stat(), M.user_support_spearman),
    }[stat_name]
    fast_interval = B.bootstrap_by_user(df, fast, n=30, seed=3)
    slow_interval = B.bootstrap_by_user(df, slow, n=30, seed=3)
    assert fast_interval == pytest.approx(slow_interval)


def test_bootstrap_contains_estimate_and_is_degenerate_for_identical_users():
    df = random_frame(num_users=60)
    point = B.accuracy_stat().point(df)
    lo, hi = B.bootstrap_by_user(df, B.accuracy_stat(), n=300)
    assert lo < point < hi
    identical = pd.DataFrame({"user_id": np.repeat(np.arange(10), 2),
                              "margin": [1.0, -1.0] * 10})
    lo, hi = B.bootstrap_by_user(identical, B.accuracy_stat(), n=200)
    assert lo == hi == 0.5
    lo, hi = B.bootstrap_by_user(identical, B.per_user_stat("std"), n=200)
    assert lo == hi == 0.0


def test_paired_difference(small):
    """Method b flips row 5 (wrong → correct): overall 5/8 - 4/8 = 0.125 for b - a.
    A method against itself: diff = lo = hi = 0 exactly."""
    assert B.paired_difference(small, small, B.gap_stat("group", "minority", "majority"),
                               n=200) == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    flipped = small.assign(margin=small["margin"].where(small["row_id"] != 5, 1.0))
    result = B.paired_difference(flipped.sample(frac=1, random_state=0), small,
                                 B.accuracy_stat(), n=200)
    assert result["diff"] == pytest.approx(0.125)
    assert 0.0 <= result["lo"] <= result["diff"] <= result["hi"]
    with pytest.raises(ValueError, match="same rows"):
        B.paired_difference(small.iloc[:7], small, B.accuracy_stat(), n=10)


def test_method_metrics_bundle(small):
    result = C.method_metrics(small, groups=["minority", "majority"], bootstrap=200)
    assert result["rows"] == 8 and result["users"] == 4
    assert result["ties"] == 1 and result["tie_rate"] == pytest.approx(0.125)
    assert result["overall"]["value"] == pytest.approx(0.5)
    assert result["overall"]["lo"] <= 0.5 <= result["overall"]["hi"]
    assert set(result["by"]) == {"group", "user_type", "seen"}
    group = result["by"]["group"]
    assert group["gap"]["value"] == pytest.approx(0.6 - 1 / 3)  # majority − minority
    assert result["by"]["user_type"]["gap"]["value"] == pytest.approx(4 / 7)
    assert group["per_user"]["minority"]["num_users"] == 2  # b and d
    assert result["per_user"]["p10"]["value"] == pytest.approx(0.15)
    assert result["spearman"]["value"] == pytest.approx(1.5 / np.sqrt(3))
    assert result["spearman"]["num_users"] == 3
    assert [b["count"] for b in result["bias_curve"]] == [1, 2, 0, 2, 3]
    no_bootstrap = C.method_metrics(small, bootstrap=0)
    assert no_bootstrap["overall"] == {"value": 0.5, "lo": None, "hi": None}
    real_data = C.method_metrics(small.assign(user_type=None, seen=None), bootstrap=0)
    assert set(real_data["by"]) == {"group"}  # all-missing optional columns count as absent
    with pytest.raises(ValueError, match="1 scored rows have no 'group'"):
        C.method_metrics(small.assign(group=[None] + ["majority"] * 7), bootstrap=0)


def test_compare_methods_keys_and_self_difference():
    df = random_frame()
    better = df.assign(margin=df["margin"] + 0.5)
    result = C.compare_methods({"vanilla": df, "pafo": better, "copy": df.copy()},
                               bootstrap=100)
    assert set(result["methods"]) == {"vanilla", "pafo", "copy"}
    assert set(result["differences"]) == {"pafo", "copy"}
    copy = result["differences"]["copy"]
    assert copy["overall_accuracy"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    assert set(copy["by"]) == {"group", "user_type"}
    assert set(copy["by"]["group"]) == {"minority_accuracy", "majority_accuracy", "gap",
                                        "minority_per_user_std", "majority_per_user_std"}
    assert result["differences"]["pafo"]["overall_accuracy"]["diff"] > 0
    with pytest.raises(ValueError, match="reference method 'vanilla'"):
        C.compare_methods({"pafo": df})


def test_bootstrap_is_fast_on_50k_rows():
    """1000 user resamples of 50k rows (500 users) for every metric of a method: seconds."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(500), 100)
    df = pd.DataFrame({"user_id": users, "margin": rng.normal(0.2, 1, len(users)),
                       "group": np.where(users < 100, "minority", "majority"),
                       "support_rate": rng.uniform(0, 1, len(users)),
                       "user_support": (users % 50) / 50.0,
                       "user_type": np.where(users < 120, "minority", "majority")})
    start = time.perf_counter()
    C.method_metrics(df, bootstrap=1000)
    assert time.perf_counter() - start < 10.0
