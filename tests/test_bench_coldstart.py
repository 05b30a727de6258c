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
