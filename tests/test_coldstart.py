"""Fair cold start on a hand-made lowrank student: two groups with opposite preferences; a
planted new user answering as the minority is placed there and scored as the minority."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pafo_ray.coldstart import (
    choose_next,
    group_margins,
    group_vectors,
    place_user,
    placement_prior,
    posterior,
)
from pafo_ray.config import ModelConfig
from pafo_ray.models import RewardModel

D, K = 6, 2


def hand_model() -> RewardModel:
    """W = first K coordinates; g = (1, 0); majority users e = (0, 0); minority e = (-2, 1.5):
    the majority likes coordinate 0, the minority coordinate 1."""
    users = [f"maj{i}" for i in range(8)] + [f"min{i}" for i in range(2)]
    model = RewardModel.from_config(ModelConfig(backbone="none", rank=K), users, input_dim=D)
    with torch.no_grad():
        model.head.base.weight.zero_()
        model.head.base.weight[0, 0] = model.head.base.weight[1, 1] = 1.0
        model.head.population.copy_(torch.tensor([1.0, 0.0]))
        table = torch.zeros(10, K)
        table[8:] = torch.tensor([-2.0, 1.5])
        model.head.user_embedding.weight.copy_(table)
    model.set_user_groups({u: "minority" if u.startswith("min") else "majority" for u in users})
    return model


MAJORITY, MINORITY = np.array([1.0, 0.0]), np.array([-1.0, 1.5])  # g + e of each group


def pairs(rng, n, weights):
    """Comparisons answered by a user of these ``g + e`` weights (deterministic labels)."""
    a, b = rng.normal(size=(n, D)), rng.normal(size=(n, D))
    swap = a[:, :K] @ weights < b[:, :K] @ weights
    chosen, rejected = np.where(swap[:, None], b, a), np.where(swap[:, None], a, b)
    return chosen.astype(np.float32), rejected.astype(np.float32)


def test_group_vectors_are_the_groups_mean_offsets():
    names, vectors, prior = group_vectors(hand_model())
    assert names == ["majority", "minority"]
    torch.testing.assert_close(vectors, torch.tensor([[0.0, 0.0], [-2.0, 1.5]]))
    torch.testing.assert_close(prior, torch.tensor([0.8, 0.2], dtype=torch.float64))


def test_a_planted_minority_user_is_placed_in_the_minority_and_scored_like_it():
    rng = np.random.default_rng(0)
    model = hand_model()
    chosen, rejected = pairs(rng, 5, MINORITY)
    placed = place_user(model, chosen, rejected, place="group")
    assert placed.group == "minority" and placed.posterior["minority"] > 0.9, placed.posterior
    # Held-out answers of the same user: the group start wins, the fallbacks lose.
    test_c, test_r = pairs(rng, 200, MINORITY)

    def accuracy(vector):
        users = vector.expand(200, -1)
        with torch.no_grad():
            m = (model.head.score_vectors(torch.from_numpy(test_c), users)
                 - model.head.score_vectors(torch.from_numpy(test_r), users))
        return float((m > 0).float().mean())

    mean = place_user(model, chosen[:0], rejected[:0], place="mean")
    assert accuracy(placed.vector) > 0.9 > 0.5 > accuracy(mean.vector)
    # A majority-type user stays in the majority.
    chosen, rejected = pairs(rng, 5, MAJORITY)
    assert place_user(model, chosen, rejected).group == "majority"
    # No answers: the prior (the larger group).
    assert place_user(model, chosen[:0], rejected[:0]).group == "majority"


def test_a_flat_prior_lets_weak_evidence_place_a_user_in_the_small_group():
    """One answer with W(φc − φr) = (0, 1): the majority's margin is 0 (σ = 0.5), the
    minority's 1.5 (σ = 0.8176). Share prior 0.8 / 0.2: 0.8·0.5 = 0.4 against
    0.2·0.8176 = 0.1635, posterior majority 0.4 / 0.5635 = 0.710; flat: minority
    0.8176 / 1.3176 = 0.621."""
    model = hand_model()
    chosen = np.zeros((1, D), dtype=np.float32)
    chosen[0, 1] = 1.0
    rejected = np.zeros((1, D), dtype=np.float32)
    share = place_user(model, chosen, rejected)
    assert share.group == "majority"
    assert share.posterior["majority"] == pytest.approx(0.4 / (0.4 + 0.2 * 0.817574), abs=1e-4)
    flat = place_user(model, chosen, rejected, prior="flat")
    assert flat.group == "minority"
    assert flat.posterior["minority"] == pytest.approx(0.817574 / 1.317574, abs=1e-4)
    torch.testing.assert_close(placement_prior(torch.tensor([0.8, 0.2]), "flat"),
                               torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="prior"):
        place_user(model, chosen, rejected, prior="uniform")


def test_fit_user_adds_a_scorable_row():
    rng = np.random.default_rng(1)
    model = hand_model()
    chosen, rejected = pairs(rng, 6, MINORITY)
    placed = model.fit_user("newbie", [""] * 6, [""] * 6, [""] * 6,
                            embeddings=(chosen, rejected))
    assert model.user_ids[-1] == "newbie" and model.user_groups["newbie"] == "minority"
    got = model.score(["newbie"], [""], [""], embeddings=chosen[:1])
    users = placed.vector.reshape(1, -1)
    want = model.head.score_vectors(torch.from_numpy(chosen[:1]), users).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="already has"):
        model.add_user("newbie", placed.vector)


def test_active_choice_asks_where_the_groups_disagree():
    model = hand_model()
    _, vectors, prior = group_vectors(model)
    phi_c = torch.zeros(3, D)
    phi_r = torch.zeros(3, D)
    phi_c[0, 0] = 1.0  # both groups agree-ish (coordinate 0 only)
    phi_c[1, 0], phi_c[1, 1] = -1.0, 1.0  # the groups disagree
    phi_c[2, 2] = 5.0  # no group cares
    margins = group_margins(model, phi_c, phi_r, vectors)
    post = posterior(margins[:0], prior)
    assert choose_next(margins, post, set()) == 1
    assert choose_next(margins, post, {1}) != 1


def test_newton_offset_is_the_ridge_logistic_optimum():
    """The lowrank fast path (Newton in K dims) reaches the same optimum as LBFGS on the loss."""
    from pafo_ray.coldstart import fit_offset

    rng = np.random.default_rng(2)
    model = hand_model()
    chosen, rejected = pairs(rng, 7, MINORITY)
    rejected[:2], chosen[:2] = chosen[:2].copy(), rejected[:2].copy()  # two noisy answers
    start = torch.tensor([-1.0, 0.5])
    pc, pr = torch.from_numpy(chosen), torch.from_numpy(rejected)
    got = fit_offset(model, pc, pr, start, shrinkage=0.7)
    delta = torch.zeros(K, requires_grad=True)
    opt = torch.optim.LBFGS([delta], max_iter=200, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        users = (start + delta).expand(7, -1)
        m = (model.head.score_vectors(pc, users) - model.head.score_vectors(pr, users))
        loss = -torch.nn.functional.logsigmoid(m).sum() + 0.7 * delta.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(got, (start + delta).detach(), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, start)  # the answers moved it
    with pytest.raises(ValueError, match="shrinkage"):
        fit_offset(model, pc, pr, start, shrinkage=0.0)


def test_fitted_group_populations_recover_planted_groups_and_round_trip(tmp_path):
    """fit_group_vectors on rows answered by planted groups gives each group's direction in the
    student's basis; the model saves and loads them, and the cold start uses them."""
    from pafo_ray.coldstart import fit_group_vectors

    rng = np.random.default_rng(3)
    model = hand_model()
    model.head.user_embedding.weight.data.zero_()  # mean offsets would say nothing
    parts, groups = [], []
    for name, weights, n in (("majority", MAJORITY, 400), ("minority", MINORITY, 100)):
        parts.append(pairs(rng, n, weights))
        groups += [name] * n
    chosen = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    rejected = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    vectors = fit_group_vectors(model, chosen, rejected, groups)
    g = model.head.population.detach()
    for name, weights in (("majority", MAJORITY), ("minority", MINORITY)):
        total = torch.tensor(vectors[name]) + g
        cos = float(total @ torch.tensor(weights, dtype=torch.float32)
                    / (total.norm() * np.linalg.norm(weights)))
        assert cos > 0.98, (name, vectors[name])
    model.set_group_vectors(vectors)
    model.save_pretrained(tmp_path / "m")
    loaded = RewardModel.from_pretrained(tmp_path / "m")
    assert loaded.group_vectors.keys() == vectors.keys()
    names, stored, prior = group_vectors(loaded)
    torch.testing.assert_close(stored, torch.tensor([vectors[n] for n in names]))
    c, r = pairs(rng, 5, MINORITY)
    placed = place_user(loaded, c, r)
    assert placed.group == "minority", placed.posterior
    with pytest.raises(ValueError, match="3 values"):
        loaded.set_group_vectors({"x": [1.0, 2.0, 3.0]})


def test_a_group_start_is_moved_only_when_validation_says_so(tmp_path):
    """choose_group_starts: the hand model's minority group vector (-2, 1.5) is right for
    users who answer as the minority, and kept; when the group's seen users answer as the
    shared population g = (1, 0), the start moves to offset 0 (more than an SE better); with
    fewer than ``min_rows`` validation rows it never moves. A moved start is where a user
    placed in that group starts, and it survives save/load."""
    from pafo_ray.coldstart import choose_group_starts

    rng = np.random.default_rng(3)
    model = hand_model()
    maj_c, maj_r = pairs(rng, 300, MAJORITY)
    min_c, min_r = pairs(rng, 300, MINORITY)
    groups = np.array(["majority"] * 300 + ["minority"] * 300, dtype=object)
    chosen = torch.from_numpy(np.concatenate([maj_c, min_c]))
    rejected = torch.from_numpy(np.concatenate([maj_r, min_r]))
    kept = choose_group_starts(model, chosen, rejected, groups)
    assert {g: c["source"] for g, c in kept.items()} == {"majority": "group", "minority": "group"}
    assert kept["minority"]["val_accuracy"]["group"] == 1.0 and kept["minority"]["val_rows"] == 300
    assert kept["minority"]["val_accuracy"]["shared"] < 0.9

    # The minority group's seen users answer like g: offset 0 serves them, the vector does not.
    like_g = np.array(["majority"] * 300 + ["minority"] * 300, dtype=object)
    chosen = torch.from_numpy(np.concatenate([maj_c, maj_c]))
    rejected = torch.from_numpy(np.concatenate([maj_r, maj_r]))
    moved = choose_group_starts(model, chosen, rejected, like_g)
    assert moved["minority"]["source"] == "shared" and moved["majority"]["source"] == "group"
    assert moved["minority"]["start"] == [0.0, 0.0]
    few = choose_group_starts(model, chosen[:340], rejected[:340], like_g[:340])
    assert few["minority"]["source"] == "group" and few["minority"]["val_rows"] == 40
    # The SE is clustered by user when the rows' users are given: 2 users of 150 rows each,
    # one all right, one all wrong under the group vector, can move nothing.
    mixed_c = torch.from_numpy(np.concatenate([maj_c, min_c[:150], maj_c[:150]]))
    mixed_r = torch.from_numpy(np.concatenate([maj_r, min_r[:150], maj_r[:150]]))
    users = np.array([f"m{i % 30}" for i in range(300)] + ["a"] * 150 + ["b"] * 150, dtype=object)
    by_row = choose_group_starts(model, mixed_c, mixed_r, groups)["minority"]
    by_user = choose_group_starts(model, mixed_c, mixed_r, groups, users)["minority"]
    assert by_row["val_accuracy"] == by_user["val_accuracy"]
    assert by_user["se"] > 10 * by_row["se"] and by_user["source"] == "group"

    model.set_group_starts({"minority": moved["minority"]["start"]})
    model.save_pretrained(tmp_path / "m")
    loaded = RewardModel.from_pretrained(tmp_path / "m")
    assert loaded.group_starts == {"minority": [0.0, 0.0]}
    c, r = pairs(rng, 5, MINORITY)
    placed = place_user(loaded, c, r, place="group")
    assert placed.group == "minority"
    torch.testing.assert_close(placed.start, torch.zeros(K))
    with pytest.raises(ValueError, match="3 values"):
        loaded.set_group_starts({"minority": [0.0, 0.0, 0.0]})


def test_a_tie_goes_to_the_larger_group_whatever_its_name():
    """Flat prior, no answers: every group at 1/G. The 8-user group is placed, also when its
    name sorts after the 2-user group's."""
    model = hand_model()
    model.set_user_groups({u: "z_big" if u.startswith("maj") else "a_small"
                           for u in model.user_ids})
    empty = np.zeros((0, D), dtype=np.float32)
    placed = place_user(model, empty, empty, prior="flat")
    assert placed.posterior == pytest.approx({"a_small": 0.5, "z_big": 0.5})
    assert placed.group == "z_big"
