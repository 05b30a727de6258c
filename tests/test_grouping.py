"""The mixture grouping (pafo_ray.grouping) on hand-made numbers and planted populations, and the
``groups`` stage on real Ray: every row once, each row in its user's group, counts that add up."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pafo_ray.grouping import fit_population, mixture_groups


def test_fit_population_solves_the_ridge_logistic_optimum():
    """One row x = [2], l2 = 0.1: the optimum of log(1 + e^{-2g}) + 0.1 g² solves
    -2 (1 - σ(2g)) + 0.2 g = 0. Checked against bisection on that equation."""
    g = float(fit_population(torch.tensor([[2.0]]), l2=0.1)[0])

    def grad(v):
        return -2 * (1 - 1 / (1 + math.exp(-2 * v))) + 0.2 * v

    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if grad(mid) < 0 else (lo, mid)
    assert g == pytest.approx(lo, abs=1e-8)
    assert 1.0 < g < 2.5  # sanity: σ(2g) is large but the ridge keeps g finite


def test_fit_population_balances_opposite_rows_and_rejects_bad_l2():
    # x and -x in equal numbers: the labels cancel, the optimum is 0.
    x = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    assert torch.allclose(fit_population(x, l2=1e-3), torch.zeros(2, dtype=torch.float64),
                          atol=1e-10)
    assert torch.equal(fit_population(torch.zeros(0, 3), l2=0.1), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="groups.l2"):
        fit_population(x, l2=0.0)


def planted(num_users=300, minority=60, rows_per_user=12, k=4, seed=0):
    """Two populations with opposite preferences on the first base reward; labels
    deterministic from the user's type (x oriented so that the chosen side wins)."""
    gen = torch.Generator().manual_seed(seed)
    g_major = torch.tensor([2.0, 1.0, 0.0, 0.0])
    g_minor = torch.tensor([-2.0, 1.0, 0.0, 0.0])
    is_minority = torch.zeros(num_users, dtype=torch.bool)
    is_minority[torch.randperm(num_users, generator=gen)[:minority]] = True
    user_index = torch.arange(num_users).repeat_interleave(rows_per_user)
    x = torch.randn(len(user_index), k, generator=gen)
    g = torch.where(is_minority[user_index, None], g_minor, g_major)
    x = x * torch.sign((x * g).sum(-1, keepdim=True))
    return x, user_index, is_minority


def test_mixture_recovers_planted_types_from_noisy_starting_groups():
    x, user_index, is_minority = planted()
    gen = torch.Generator().manual_seed(1)
    # Start like a noisy support rate: 40% of the minority group are in fact majority users.
    initial = torch.ones(len(is_minority), dtype=torch.long)
    minority_users = torch.nonzero(is_minority).squeeze(1)
    majority_users = torch.nonzero(~is_minority).squeeze(1)
    initial[minority_users[:36]] = 0
    initial[majority_users[torch.randperm(len(majority_users), generator=gen)[:24]]] = 0
    assert int((initial == 0).sum()) == 60
    start_precision = float(is_minority[initial == 0].float().mean())
    assert start_precision == pytest.approx(0.6)

    result = mixture_groups(x, user_index, initial, iterations=2, l2=1e-3)
    assert int((result.groups == 0).sum()) == 60  # sizes kept
    precision = float(is_minority[result.groups == 0].float().mean())
    assert precision >= 0.95
    assert result.moved[0] >= 20
    # The fitted populations point the planted ways on the first base reward.
    assert result.populations[0, 0] < 0 < result.populations[1, 0]
    assert torch.isfinite(result.score).all()
    # Here the types separate cleanly: every user ends in its more likely group.
    assert (result.score >= 0).all()


def test_users_without_rows_keep_their_group_and_zero_rounds_change_nothing():
    x, user_index, is_minority = planted(num_users=50, minority=10)
    initial = (~is_minority).long()
    initial = torch.cat([initial, torch.tensor([1, 0])])  # two users with no rows at all
    result = mixture_groups(x, user_index, initial, iterations=3)
    assert result.groups[-2:].tolist() == [1, 0]
    assert math.isnan(float(result.score[-1]))
    same = mixture_groups(x, user_index, initial, iterations=0)
    assert torch.equal(same.groups, initial) and same.moved == []
    with pytest.raises(ValueError, match="user_index"):
        mixture_groups(x, user_index + 100, initial)


def test_three_groups_take_the_most_likely_population():
    """With three groups (no sizes kept) each planted type gathers in one group of its own."""
    x, user_index, is_minority = planted(num_users=120, minority=40)
    initial = torch.where(is_minority, 0, 2)
    initial[::7] = 1  # a third group seeded with a mix of both types
    result = mixture_groups(x, user_index, initial, iterations=3)
    minority_mode = torch.mode(result.groups[is_minority]).values
    majority_mode = torch.mode(result.groups[~is_minority]).values
    assert minority_mode != majority_mode
    assert float((result.groups[is_minority] == minority_mode).float().mean()) >= 0.9
    assert float((result.groups[~is_minority] == majority_mode).float().mean()) >= 0.9


# --------------------------------------------------------------------- the stage on Ray


@pytest.fixture(scope="module")
def grouped(ray_session, tmp_path_factory):
    from conftest import small_overrides

    from pafo_ray.config import load_config
    from pafo_ray.stages.base import StageContext, run_pipeline

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("groups")
    overrides = small_overrides(tmp, **{"data.generator.num_users": 80,
                                        "data.generator.num_prompts": 60,
                                        "data.generator.raters_train": 2,
                                        "data.generator.label_beta": "null",
                                        "train.epochs": 10, "train.lr": 0.03})
    ctx = StageContext.create(load_config(None, overrides))
    run_pipeline(ctx, ["input", "prepare", "embed", "regularize", "groups"])
    support = StageContext.create(load_config(None, overrides + [
        "groups.method=support", "run.run_name=support"]))
    run_pipeline(support, ["input", "prepare", "embed", "regularize", "groups"])
    return ctx, support


def _rows(run_dir, stage):
    import pyarrow.dataset as pads

    table = pads.dataset(run_dir.uri(stage, "data"), format="parquet",
                         partitioning="hive").to_table().to_pandas()
    return table[table["split"].isin(["train", "val", "test"])]


@pytest.mark.ray
def test_groups_stage_keeps_every_row_once_in_its_users_group(grouped):
    ctx, _ = grouped
    prepared, rows = _rows(ctx.run_dir, "prepare"), _rows(ctx.run_dir, "groups")
    assert sorted(rows["row_id"]) == sorted(prepared["row_id"])
    users = ctx.run_dir.users().set_index("user_id")
    mapped = users["group"].reindex(rows["user_id"].astype(str)).to_numpy()
    assert (rows["group"].astype(str).to_numpy() == mapped).all()
    summary = ctx.run_dir.read_json("groups", "summary.json")
    counts = rows.groupby(["split", "group"]).size()
    for split, groups in summary["groups"].items():
        for group, n in groups.items():
            assert counts[(split, group)] == n
    # The default sizes=estimate: EM's fitted mixing weights are recorded per round, each a
    # distribution over the two groups, and the users table agrees with the counts.
    assert summary["sizes"] == "estimate" and summary["sizes_used"] == "estimate"
    assert summary["sizes_fallback"] is None
    mixing = summary["mixing_per_round"]
    assert mixing and all(len(m) == 2 and abs(sum(m) - 1) < 1e-4 for m in mixing)
    assert summary["users_by_group"]["minority"] == int((users["group"] == "minority").sum())
    assert summary["users_moved"] == int((users["group"] != users["support_group"]).sum())
    share = summary["user_types"]["minority_type_share"]
    assert set(share) == {"support_group", "group"}


@pytest.mark.ray
def test_support_method_keeps_prepares_groups(grouped):
    _, support = grouped
    users = support.run_dir.users()
    assert (users["group"] == users["support_group"]).all()
    rows = _rows(support.run_dir, "groups")
    prepared = _rows(support.run_dir, "prepare").set_index("row_id")
    assert (rows.set_index("row_id")["group"].astype(str)
            == prepared.loc[rows["row_id"], "group"].astype(str).to_numpy()).all()
    assert "users_moved" in support.run_dir.read_json("groups", "summary.json")
    assert np.isnan(users["mixture_score"]).all()


def test_estimated_sizes_recover_a_planted_minority_size():
    """30 minority-type users of 200 (15%), 40 rows each; the support groups start with 40
    users in the minority group (a 20% quantile), 24 of them minority-type. sizes=quantile keeps
    40; sizes=estimate lets EM fit the mixing weight and ends with ~30 (π_min ≈ 0.15), nearly
    all minority-type."""
    x, user_index, is_minority = planted(num_users=200, minority=30, rows_per_user=40, seed=3)
    initial = torch.ones(200, dtype=torch.long)
    minority_users = torch.nonzero(is_minority).squeeze(1)
    majority_users = torch.nonzero(~is_minority).squeeze(1)
    initial[minority_users[:24]] = 0
    initial[majority_users[:16]] = 0
    kept = mixture_groups(x, user_index, initial, iterations=5, sizes="quantile")
    assert int((kept.groups == 0).sum()) == 40 and kept.mixing is None
    estimated = mixture_groups(x, user_index, initial, iterations=5, sizes="estimate")
    size = int((estimated.groups == 0).sum())
    assert abs(size - 30) <= 2
    assert float(is_minority[estimated.groups == 0].float().mean()) >= 0.9
    assert estimated.mixing[0] == pytest.approx([0.2, 0.8])  # the start's share
    assert estimated.mixing[-1][0] == pytest.approx(0.15, abs=0.02)
    assert estimated.populations[0, 0] < 0 < estimated.populations[1, 0]
    with pytest.raises(ValueError, match="groups.sizes"):
        mixture_groups(x, user_index, initial, sizes="bic")


def test_fit_population_weights_rows():
    """Weights 1 on x = [2] and 0 on x = [−2] give the one-row optimum; no weight gives 0."""
    x = torch.tensor([[2.0], [-2.0]])
    one_row = fit_population(x[:1], l2=0.1)
    assert torch.allclose(fit_population(x, l2=0.1, weight=torch.tensor([1.0, 0.0])), one_row)
    assert float(fit_population(x, l2=0.1, weight=torch.zeros(2))[0]) == 0.0


def test_estimate_that_empties_a_group_falls_back_to_the_quantile_sizes():
    """One population only (no minority type), 60 users with 7 rows each, 12 users in the
    starting minority group: EM's posteriors leave group 0 empty. With min_users the quantile
    sizes are kept (12 users) and the result says why; without the guard (min_users=0) the
    group is empty, which is what the guard exists for."""
    x, user_index, _ = planted(num_users=60, minority=0, rows_per_user=7, seed=0)
    initial = torch.ones(60, dtype=torch.long)
    initial[:12] = 0
    bare = mixture_groups(x, user_index, initial, iterations=2, sizes="estimate", min_users=0)
    assert bare.sizes_used == "estimate" and int((bare.groups == 0).sum()) == 0
    kept = mixture_groups(x, user_index, initial, iterations=2, sizes="estimate", min_users=5)
    assert kept.sizes_used == "quantile"
    assert int((kept.groups == 0).sum()) == 12
    assert "group 0 with 0 user(s)" in kept.fallback and "quantile sizes used" in kept.fallback
    assert kept.mixing == bare.mixing  # the estimate's weights kept for the record
    # A planted minority large enough to estimate is not overridden by the guard.
    x, user_index, is_minority = planted(num_users=200, minority=30, rows_per_user=40, seed=3)
    initial = torch.ones(200, dtype=torch.long)
    initial[torch.nonzero(is_minority).squeeze(1)[:24]] = 0
    initial[torch.nonzero(~is_minority).squeeze(1)[:16]] = 0
    estimated = mixture_groups(x, user_index, initial, iterations=5, sizes="estimate", min_users=5)
    assert estimated.sizes_used == "estimate" and estimated.fallback is None


@pytest.mark.parametrize("override,key", [("groups.sizes=bic", "groups.sizes"),
                                          ("groups.iterations=-1", "groups.iterations"),
                                          ("groups.l2=0", "groups.l2"),
                                          ("groups.min_users=0", "groups.min_users"),
                                          ("groups.choose_round=best", "groups.choose_round")])
def test_bad_group_settings_are_config_errors_naming_the_key(override, key):
    from pafo_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_validation_loglik_by_hand():
    """K = 1, populations g = [1] and [−1]. User 0 sits in group 0 (one-hot) with one
    validation row x = 2; user 1 has posterior (0.25, 0.75) and rows x = −1 and 3:
    (log σ(2) + log(0.25 σ(−1) σ(3) + 0.75 σ(1) σ(−3))) / 3 rows."""
    from pafo_ray.grouping import validation_loglik

    def s(v):
        return 1 / (1 + math.exp(-v))

    expected = (math.log(s(2)) + math.log(0.25 * s(-1) * s(3) + 0.75 * s(1) * s(-3))) / 3
    log_weight = torch.log(torch.tensor([[1.0, 0.0], [0.25, 0.75]], dtype=torch.float64))
    value = validation_loglik(torch.tensor([[2.0], [-1.0], [3.0]]), torch.tensor([0, 1, 1]),
                              torch.tensor([[1.0], [-1.0]], dtype=torch.float64), log_weight)
    assert value == pytest.approx(expected, abs=1e-12)


def _rows_of(is_minority, rows_per_user, seed, flip=0.0):
    """Rows of the planted users (as :func:`planted`), a share ``flip`` of labels reversed."""
    gen = torch.Generator().manual_seed(seed)
    g_major, g_minor = torch.tensor([2.0, 1.0, 0.0, 0.0]), torch.tensor([-2.0, 1.0, 0.0, 0.0])
    user_index = torch.arange(len(is_minority)).repeat_interleave(rows_per_user)
    x = torch.randn(len(user_index), 4, generator=gen)
    g = torch.where(is_minority[user_index, None], g_minor, g_major)
    x = x * torch.sign((x * g).sum(-1, keepdim=True))
    flipped = torch.rand(len(user_index), generator=gen) < flip
    return torch.where(flipped[:, None], -x, x), user_index


def test_the_round_kept_is_the_one_validation_likes_best_and_it_goes_past_two():
    """A 95/5 population started from a 20% group, as at builtin-95: two EM rounds leave many
    majority-type users in the minority group; the round chosen on the validation rows is a
    later one, purer, and the same groups a run of exactly that many rounds gives."""
    is_minority = torch.zeros(400, dtype=torch.bool)
    is_minority[:20] = True
    x, users = _rows_of(is_minority, 10, seed=0, flip=0.1)
    val_x, val_users = _rows_of(is_minority, 10, seed=1, flip=0.1)
    initial = torch.ones(400, dtype=torch.long)
    initial[:50] = 0  # the 20 minority-type users and 30 majority-type ones

    def purity(result):
        return float(is_minority[result.groups == 0].float().mean())

    two = mixture_groups(x, users, initial, iterations=2, sizes="estimate")
    chosen = mixture_groups(x, users, initial, iterations=20, sizes="estimate",
                            val_x=val_x, val_user_index=val_users)
    assert chosen.round_kept == 1 + int(np.argmax(chosen.val_loglik)) > 2
    assert len(chosen.val_loglik) == len(chosen.moved) <= 20
    assert purity(chosen) >= 0.9 and purity(chosen) > purity(two) + 0.2
    again = mixture_groups(x, users, initial, iterations=chosen.round_kept, sizes="estimate")
    assert torch.equal(again.groups, chosen.groups)
    assert torch.allclose(again.populations, chosen.populations)
    # Quantile sizes with validation: rounds 0 (the start) .. the last, one value each.
    kept = mixture_groups(x, users, initial, iterations=3, sizes="quantile",
                          val_x=val_x, val_user_index=val_users)
    assert len(kept.val_loglik) == len(kept.moved) + 1
    assert kept.round_kept == int(np.argmax(kept.val_loglik))
    assert int((kept.groups == 0).sum()) == 50
