"""The cold-start benchmark's type gap and its user-bootstrap interval (issue 19's goal is a
gap, so the benchmark states how sure it is)."""

import pytest

from benchmarks.coldstart import gap_interval


def test_gap_is_pooled_rows_and_its_interval_reflects_user_spread():
    # Majority: 10 users at 8/10 and 10 at 10/10 -> 180/200 = 0.9; minority: 5..9 of 10 ->
    # 35/50 = 0.7. Gap 0.2 by hand.
    rows = ([(f"a{i}", "majority", 8 if i % 2 else 10, 10) for i in range(20)]
            + [(f"b{i}", "minority", 5 + i, 10) for i in range(5)])
    spread = gap_interval(rows, seed=0)
    assert spread["gap"] == pytest.approx(0.2)
    assert spread["low"] < 0.2 < spread["high"]
    assert spread["high"] - spread["low"] > 0.1  # 5 minority users: a wide interval
    # Every user of a type at the same accuracy: no resample can move the gap.
    flat = gap_interval([(f"a{i}", "majority", 8, 10) for i in range(20)]
                        + [(f"b{i}", "minority", 6, 10) for i in range(5)])
    assert flat["low"] == pytest.approx(0.2) and flat["high"] == pytest.approx(0.2)
    # One type only: no gap, never a made-up number.
    assert gap_interval([("a", "majority", 5, 10)])["gap"] is None


def test_majority_difference_is_paired_on_the_same_users():
    from benchmarks.coldstart import majority_difference

    # Every majority user 9/10 against the fallback's 8/10: +0.1 whatever users are drawn.
    method = [(f"a{i}", "majority", 9, 10) for i in range(10)] + [("b0", "minority", 1, 10)]
    fallback = [(f"a{i}", "majority", 8, 10) for i in range(10)] + [("b0", "minority", 9, 10)]
    same = majority_difference(method, fallback)
    assert same["diff"] == pytest.approx(0.1)
    assert same["low"] == pytest.approx(0.1) and same["high"] == pytest.approx(0.1)
    # Half the users gain 2 rows, half lose 1: +0.05 with an interval around it.
    method = [(f"a{i}", "majority", 10 if i % 2 else 7, 10) for i in range(10)]
    spread = majority_difference(method, fallback)
    assert spread["diff"] == pytest.approx(0.05)
    assert spread["low"] < 0.05 < spread["high"]
    assert majority_difference([("b0", "minority", 1, 10)], [("b0", "minority", 2, 10)])[
        "diff"] is None


def test_pool_counts_each_seeds_users_apart(tmp_path):
    import json

    from benchmarks.coldstart import main, pool

    def run(seed, minority_hits):
        rows = ([("u0", "majority", 9, 10), ("u1", "majority", 7, 10)]
                + [("u2", "minority", minority_hits, 10)])
        fallback = [("u0", "majority", 8, 10), ("u1", "majority", 8, 10),
                    ("u2", "minority", 5, 10)]
        return {"seed": seed, "dataset": "builtin-80",
                "users_at_goal": {"3.0": {"group": rows, "mean": fallback}}}

    pooled = pool([run(0, 6), run(1, 8)])["pooled"]["3.0"]
    # The same ids in two seeds are four majority and two minority users: 32/40 vs 14/20.
    assert pooled["group"]["users"] == {"majority": 4, "minority": 2}
    assert pooled["group"]["gap"]["gap"] == pytest.approx(0.8 - 0.7)
    assert pooled["group"]["majority_vs_fallback"]["diff"] == pytest.approx(0.0)
    assert pooled["mean"]["gap"]["gap"] == pytest.approx(0.8 - 0.5)
    # From the command line: two files pooled; a repeated seed or an old file is an error.
    paths = []
    for seed, hits in ((0, 6), (1, 8)):
        paths.append(tmp_path / f"s{seed}.json")
        paths[-1].write_text(json.dumps(run(seed, hits)))
    assert main(["--pool", *map(str, paths), "--out", str(tmp_path / "pooled")]) == 0
    assert "| group | 4 / 2 | +10.0" in (tmp_path / "pooled" / "coldstart_pooled.md").read_text()
    with pytest.raises(SystemExit, match="share a seed"):
        main(["--pool", str(paths[0]), str(paths[0]), "--out", str(tmp_path)])
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"seed": 2, "dataset": "builtin-80", "tables": {}}))
    with pytest.raises(SystemExit, match="users_at_goal"):
        main(["--pool", str(old), "--out", str(tmp_path)])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SystemExit, match="broken.json: cannot read"):
        main(["--pool", str(broken), "--out", str(tmp_path)])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**run(2, 7), "users_at_goal": {
        "1.0": run(2, 7)["users_at_goal"]["3.0"]}}))
    with pytest.raises(SystemExit, match="no offset shrinkage is in every file"):
        main(["--pool", str(paths[0]), str(other), "--out", str(tmp_path)])
