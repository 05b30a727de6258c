"""The active cold start as a user drives it (pafo_ray.active.ActiveSession), on the hand-made
two-group student of test_coldstart: W = first 2 coordinates, majority weights (1, 0),
minority (−1, 1.5), 80% / 20% of the trained users."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_coldstart import MINORITY, D, hand_model, pairs

from pafo_ray.active import ActiveSession
from pafo_ray.coldstart import place_user


def pool():
    """Four pairs: 0 both groups prefer a a little (coordinate 0 and 1 equal), 1 the groups
    disagree (a = −coord 0 + coord 1), 2 no group cares, 3 = pair 1 mirrored (b is 1's a)."""
    a, b = np.zeros((4, D), np.float32), np.zeros((4, D), np.float32)
    a[0, 0], a[0, 1] = 1.0, 1.0
    a[1, 0], a[1, 1] = -1.0, 1.0
    a[2, 4] = 5.0
    b[3, 0], b[3, 1] = -1.0, 1.0
    return a, b


def test_asks_where_the_groups_disagree_and_places_by_the_answers():
    model = hand_model()
    a, b = pool()
    session = ActiveSession(model, a, b)
    # Flat prior, no answers: 0.5 / 0.5. Pair 1: majority margin −1 (σ 0.269), minority +2.5
    # (σ 0.924): variance 0.107; pair 3 the same pair mirrored (same variance, asked second
    # at most); pair 0: margins 1 and 0.5 (σ 0.731, 0.622): variance 0.003; pair 2: 0.
    assert session.posterior == pytest.approx({"majority": 0.5, "minority": 0.5})
    first = session.next()
    assert first == 1
    session.answer(first, prefers_a=True)  # as the minority would
    # Posterior ∝ 0.5 σ(−1), 0.5 σ(2.5): minority 0.924 / (0.269 + 0.924) = 0.775.
    assert session.posterior["minority"] == pytest.approx(0.924142 / (0.268941 + 0.924142),
                                                          abs=1e-5)
    assert session.next() == 3
    session.answer(3, prefers_a=False)  # b of pair 3 is a of pair 1: the same answer again
    placed = session.place()
    assert placed.group == "minority"
    # The session's placement is place_user's on the oriented answers.
    chosen, rejected = np.stack([a[1], b[3]]), np.stack([b[1], a[3]])
    same = place_user(model, chosen, rejected, prior="flat")
    assert same.group == placed.group
    torch.testing.assert_close(same.vector, placed.vector)
    assert same.posterior == pytest.approx(placed.posterior)


def test_the_answer_side_matters():
    """The same question answered the majority's way places the user in the majority."""
    model = hand_model()
    session = ActiveSession(model, *pool())
    session.answer(session.next(), prefers_a=False)
    assert session.posterior["majority"] == pytest.approx(0.731059 / (0.731059 + 0.075858),
                                                          abs=1e-5)
    assert session.place().group == "majority"


def test_share_prior_needs_more_evidence_than_flat():
    """One minority-side answer on pair 1: share prior 0.8 / 0.2 gives 0.8·0.269 = 0.215
    against 0.2·0.924 = 0.185 (majority 0.538); flat gives the minority 0.775."""
    model = hand_model()
    share = ActiveSession(model, *pool(), prior="share")
    share.answer(1, prefers_a=True)
    assert share.posterior["majority"] == pytest.approx(
        0.8 * 0.268941 / (0.8 * 0.268941 + 0.2 * 0.924142), abs=1e-5)
    assert share.place().group == "majority"
    flat = ActiveSession(model, *pool())
    flat.answer(1, prefers_a=True)
    assert flat.place().group == "minority"


def test_a_planted_minority_user_is_found_in_five_questions_and_added():
    rng = np.random.default_rng(3)
    model = hand_model()
    chosen, rejected = pairs(rng, 40, MINORITY)  # a = what this user prefers
    session = ActiveSession(model, chosen, rejected)
    for _ in range(5):
        session.answer(session.next(), prefers_a=True)
    assert len(set(session.asked)) == 5
    placed = session.add_user("newbie")
    assert placed.group == "minority" and placed.posterior["minority"] > 0.95
    assert model.user_groups["newbie"] == "minority"
    test_c, test_r = pairs(rng, 200, MINORITY)
    margin = (model.score(["newbie"] * 200, [""] * 200, [""] * 200, embeddings=test_c)
              - model.score(["newbie"] * 200, [""] * 200, [""] * 200, embeddings=test_r))
    assert (margin > 0).mean() > 0.9


def test_every_pair_answered_then_none_and_bad_answers_are_errors():
    model = hand_model()
    session = ActiveSession(model, *pool())
    for _ in range(4):
        session.answer(session.next(), prefers_a=True)
    assert session.next() is None and sorted(session.asked) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="already answered"):
        session.answer(1, prefers_a=True)
    fresh = ActiveSession(model, *pool())
    for bad in (4, -1, "1", True, 1.0):
        with pytest.raises(ValueError, match="pool position"):
            fresh.answer(bad, prefers_a=True)
    with pytest.raises(ValueError, match="prefers_a"):
        fresh.answer(0, prefers_a="a")
    a, b = pool()
    with pytest.raises(ValueError, match="same"):
        ActiveSession(model, a, b[:3])
    with pytest.raises(ValueError, match="prior"):
        ActiveSession(model, a, b, prior="uniform")
    with pytest.raises(ValueError, match="differ in length"):
        ActiveSession.from_texts(model, ["p"], ["x", "y"], ["z"])
