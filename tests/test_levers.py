"""Each lever of the method (DESIGN §6, issue "make the fairness gain real") is wired in.

Unit tests without Ray: a bug that disconnected a lever from the loss would break them.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pafo_ray import losses
from pafo_ray.config import load_config
from pafo_ray.models import RewardModel
from pafo_ray.train.arrays import Rows
from pafo_ray.train.jobs import objective_for
from pafo_ray.train.loop import Objective, PairScorer


def _rows(n=6, with_targets=True) -> Rows:
    rows = Rows(user_index=torch.tensor([0, 1, 2, 0, 1, 2][:n]),
                group_index=torch.tensor([0, 0, 1, 1, 1, 1][:n]),
                weight=torch.ones(n))
    if with_targets:
        rows.teacher_margin = torch.tensor([2.0, -1.0, 0.5, 1.0, 3.0, -2.0][:n])
        rows.distill_mask = torch.ones(n)
    return rows


def _model(cfg):
    torch.manual_seed(0)
    return RewardModel.from_config(cfg.model, ["a", "b", "c"], input_dim=4)


MARGIN = torch.tensor([0.3, -0.2, 1.0, 0.0, 0.5, -1.5])


def test_minority_weight_scales_only_minority_rows():
    cfg = load_config(None, ["distill.minority_weight=3.0"])
    objective = Objective(**objective_for("pafo", cfg))
    weight = objective.row_weight(_rows())
    assert weight.tolist() == [3.0, 3.0, 1.0, 1.0, 1.0, 1.0]


def test_lambda_temperature_and_loss_kind_reach_the_loss():
    """loss = Σ w (BT + λ·D) / Σ w with the configured D; λ=0 is plain weighted BT."""
    rows, model = _rows(), _model(load_config())
    results = {}
    for name, overrides in {"lam0": ["distill.lam=0.0"],
                            "mse": ["distill.lam=2.0", "distill.loss=mse", "distill.clip=null"],
                            "kl_t1": ["distill.lam=2.0", "distill.loss=kl", "distill.temperature=1.0"],
                            "kl_t3": ["distill.lam=2.0", "distill.loss=kl", "distill.temperature=3.0"]
                            }.items():
        cfg = load_config(None, overrides + ["distill.minority_weight=1.0", "model.user_shrinkage=0"])
        loss, _ = Objective(**objective_for("pafo", cfg))(MARGIN, rows, PairScorer(model))
        results[name] = float(loss)
    bt = float(losses.bradley_terry_loss(MARGIN).mean())
    assert results["lam0"] == pytest.approx(bt, rel=1e-6)
    mse = float(((MARGIN - rows.teacher_margin) ** 2).mean())
    assert results["mse"] == pytest.approx(bt + 2.0 * mse, rel=1e-5)
    kl1 = float(losses.bernoulli_kl(MARGIN, rows.teacher_margin, 1.0).mean())
    kl3 = float(losses.bernoulli_kl(MARGIN, rows.teacher_margin, 3.0).mean())
    assert results["kl_t1"] == pytest.approx(bt + 2.0 * kl1, rel=1e-5)
    assert results["kl_t3"] == pytest.approx(bt + 2.0 * kl3, rel=1e-5)
    assert kl1 != pytest.approx(kl3)


def test_user_shrinkage_adds_the_penalty_on_user_embeddings():
    rows = _rows(with_targets=False)
    base = load_config(None, ["model.user_shrinkage=0"])
    model = _model(base)
    plain, _ = Objective(**objective_for("vanilla", base))(MARGIN, rows, PairScorer(model))
    shrunk_cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, user_shrinkage=0.5))
    shrunk, _ = Objective(**objective_for("vanilla", shrunk_cfg))(MARGIN, rows, PairScorer(model))
    expected = 0.5 * float(model.head.user_penalty().detach())
    assert float((shrunk - plain).detach()) == pytest.approx(expected, rel=1e-4)


def test_population_term_is_a_switch_of_the_head():
    with_g = _model(load_config(None, ["model.population_term=true"]))
    without = _model(load_config(None, ["model.population_term=false"]))
    names_with = {n for n, _ in with_g.head.named_parameters()}
    names_without = {n for n, _ in without.head.named_parameters()}
    assert len(names_with - names_without) == 1  # exactly the shared population vector g


def test_reweight_and_baseline_objectives_differ_from_vanilla():
    rows = _rows(with_targets=False)
    cfg = load_config(None, ["model.user_shrinkage=0"])
    model = PairScorer(_model(cfg))
    values = {}
    for method in ("vanilla", "reweight", "groupdro", "fairness_penalty"):
        objective = Objective(**objective_for(method, cfg))
        objective.prepare(rows)
        values[method] = float(objective(MARGIN, rows, model)[0])
    per_row = losses.bradley_terry_loss(MARGIN)
    # reweight: minority rows (2 of 6) weigh 6/(2·2)=1.5, majority 6/(2·4)=0.75
    w = torch.tensor([1.5, 1.5, 0.75, 0.75, 0.75, 0.75])
    assert values["reweight"] == pytest.approx(float((w * per_row).sum() / w.sum()), rel=1e-5)
    assert values["fairness_penalty"] > values["vanilla"]
    assert len({round(v, 6) for v in values.values()}) == 4


def test_teacher_init_from_vanilla_starts_from_its_weights(tmp_path):
    from pafo_ray.train.build import build_model

    cfg = load_config()
    vanilla = _model(cfg)
    vanilla.save_pretrained(tmp_path / "vanilla")
    started = build_model(cfg.model, ["a", "b", "c"], None, str(tmp_path / "vanilla"))
    for (name, a), (_, b) in zip(vanilla.state_dict().items(), started.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_search_space_levers_reach_the_config():
    """user_shrinkage is searched into the model section (and so into the objective) when a
    space names it; teacher_init is fixed to auto unless teachers.init=both trained both
    teacher sets; extra_pairs is cut to what the margins stage scored."""
    from tuning.search import space_overrides
    from tuning.space import SEARCHABLE, apply_params, read_space

    assert SEARCHABLE["user_shrinkage"][0] == "model"
    cfg = apply_params(load_config(), {"user_shrinkage": 0.05, "teacher_init": "vanilla"})
    assert cfg.model.user_shrinkage == 0.05 and cfg.distill.teacher_init == "vanilla"
    assert objective_for("pafo", cfg)["user_shrinkage"] == 0.05
    # Regularisation is shared with vanilla by default: not in the shipped space.
    assert "teacher_init" in read_space() and "user_shrinkage" not in read_space()
    assert space_overrides(load_config()) == {"teacher_init": {"type": "fixed", "value": "auto"}}
    assert space_overrides(load_config(None, ["teachers.init=both"])) == {}
    shipped = read_space()["extra_pairs"]
    assert (shipped["low"], shipped["high"], shipped["step"]) == (0, 40, 10)
    cut = space_overrides(load_config(None, ["teachers.init=both",
                                             "margins.extra_pairs_per_user=25"]))
    assert cut == {"extra_pairs": {**shipped, "high": 20}}
    none = space_overrides(load_config(None, ["teachers.init=both",
                                              "margins.extra_pairs_per_user=0"]))
    assert none == {"extra_pairs": {"type": "fixed", "value": 0}}


def test_tune_stage_hash_follows_the_space_file(tmp_path):
    from pafo_ray.stages import tune

    space = tmp_path / "space.yaml"
    space.write_text("lam: {type: loguniform, low: 0.1, high: 1.0}\n")
    first = tune.hash_payload(load_config(None, [f"tune.space={space}"]))
    space.write_text("lam: {type: loguniform, low: 0.1, high: 2.0}\n")
    assert tune.hash_payload(load_config(None, [f"tune.space={space}"])) != first
    both = tune.hash_payload(load_config(None, ["teachers.init=both"]))
    assert both != tune.hash_payload(load_config())


@pytest.mark.parametrize("method", ["faro_dp", "faro_eo"])
def test_faro_objectives_add_the_multiplied_constraint_after_a_dual_step(method):
    """μ starts at 0, so the first step's loss is vanilla's; the constraint is violated
    (group gaps > ε = 0), so μ rises by baselines.faro_dual_lr · gap and the next loss is
    vanilla + μ · gap. The multipliers travel with the objective's state (resume)."""
    rows = _rows(with_targets=False)
    rows.chosen_index = torch.tensor([0, 3, 4, 1, 5, 2])
    rows.rejected_index = torch.tensor([1, 2, 5, 0, 4, 3])
    cfg = load_config(None, ["model.user_shrinkage=0", "baselines.faro_epsilon=0",
                             "baselines.faro_dual_lr=3.0"])
    model = PairScorer(_model(cfg))
    vanilla = float(Objective(**objective_for("vanilla", cfg))(MARGIN, rows, model)[0])
    objective = Objective(**objective_for(method, cfg))
    assert float(objective(MARGIN, rows, model)[0]) == pytest.approx(vanilla, rel=1e-6)
    group = rows.group_index
    if method == "faro_dp":
        gaps = losses.demographic_parity_gap(MARGIN, group, 2)[None]
    else:
        label = (rows.chosen_index < rows.rejected_index).long()
        gaps = losses.equalized_odds_gaps(MARGIN, group, label, 2)
    assert float(gaps.max()) > 0
    mu = objective.state_dict()["multipliers"]
    assert mu == pytest.approx((3.0 * gaps).tolist(), rel=1e-5)
    expected = vanilla + float((3.0 * gaps * gaps).sum())
    assert float(objective(MARGIN, rows, model)[0]) == pytest.approx(expected, rel=1e-5)
    resumed = Objective(**objective_for(method, cfg))
    resumed.load_state_dict({"multipliers": mu})
    assert resumed.state_dict()["multipliers"] == pytest.approx(mu)


def test_faro_eo_needs_the_pair_orientation():
    cfg = load_config(None, ["model.user_shrinkage=0"])
    objective = Objective(**objective_for("faro_eo", cfg))
    with pytest.raises(ValueError, match="model.mode=frozen"):
        objective(MARGIN, _rows(with_targets=False), PairScorer(_model(cfg)))


@pytest.mark.parametrize("override,key", [("baselines.faro_epsilon=-0.1", "baselines.faro_epsilon"),
                                          ("baselines.faro_dual_lr=-1", "baselines.faro_dual_lr"),
                                          ("baselines.faro_epsilon=.nan", "baselines.faro_epsilon")])
def test_bad_faro_settings_are_config_errors_naming_the_key(override, key):
    from pafo_ray.config import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_base_hidden_puts_a_standardized_gelu_layer_under_the_base_rewards(tmp_path):
    """model.base_hidden: b = W·gelu(A·(φ − μ)/σ + a) with μ, σ from the cache (by hand),
    saved with the model; 0 keeps the linear base."""
    from pafo_ray.train.arrays import Cache
    from pafo_ray.train.build import build_model

    torch.manual_seed(0)
    vectors = torch.randn(50, 16) * 3 + 5
    cache = Cache(torch.arange(50).numpy(), vectors)
    cfg = load_config(None, ["model.base_hidden=4"])
    model = build_model(cfg.model, ["a", "b"], cache)
    linear = build_model(load_config(None, []).model, ["a", "b"], cache)
    assert isinstance(linear.head.base, torch.nn.Linear)
    adapter, out = model.head.base
    assert out.weight.shape == (cfg.model.rank, 4) and adapter.layer.weight.shape == (4, 16)
    assert torch.allclose(adapter.mean, vectors.mean(0)) and torch.allclose(adapter.std, vectors.std(0))
    phi = vectors[:3]
    by_hand = torch.nn.functional.gelu(
        ((phi - vectors.mean(0)) / vectors.std(0)) @ adapter.layer.weight.T + adapter.layer.bias
    ) @ out.weight.T
    assert torch.allclose(model.head.base(phi), by_hand, atol=1e-5)
    users = torch.tensor([0, 1, 0])
    expected = ((model.head.population + model.head.user_embedding(users)) * by_hand).sum(-1)
    assert torch.allclose(model.head(phi, users), expected, atol=1e-5)
    model.save_pretrained(tmp_path / "m")
    loaded = RewardModel.from_pretrained(tmp_path / "m")
    assert loaded.model_cfg.base_hidden == 4
    assert torch.allclose(loaded.head(phi, users), model.head(phi, users), atol=1e-6)


def test_base_hidden_fits_a_preference_no_linear_base_can():
    """Users who prefer texts far from the centre, on one feature: |φ| is not linear in φ, so
    the linear base stays near chance while the GELU layer learns it."""
    from pafo_ray.train.arrays import Cache
    from pafo_ray.train.build import build_model

    torch.manual_seed(0)
    n = 600
    vectors = torch.randn(2 * n, 8)
    chosen, rejected = vectors[:n], vectors[n:]
    flip = chosen[:, 0].abs() < rejected[:, 0].abs()  # the chosen text is the farther one
    chosen, rejected = torch.where(flip[:, None], rejected, chosen), torch.where(flip[:, None], chosen, rejected)
    cache = Cache(torch.arange(2 * n).numpy(), vectors)
    users = torch.zeros(n, dtype=torch.long)

    def train_accuracy(overrides):
        model = build_model(load_config(None, overrides).model, ["u"], cache)
        opt = torch.optim.Adam(model.head.parameters(), lr=0.03)
        for _ in range(300):
            opt.zero_grad()
            margin = model.head(chosen, users) - model.head(rejected, users)
            torch.nn.functional.softplus(-margin).mean().backward()
            opt.step()
        with torch.no_grad():
            return float(((model.head(chosen, users) - model.head(rejected, users)) > 0).float().mean())

    linear, hidden = train_accuracy([]), train_accuracy(["model.base_hidden=16"])
    assert linear < 0.65 and hidden > 0.85, (linear, hidden)


@pytest.mark.parametrize("override,message", [
    (["model.base_hidden=-1"], "model.base_hidden: expected >= 0"),
    (["model.base_hidden=8", "model.head=mlp"], "model.base_hidden=8 needs model.head=lowrank"),
    (["model.base_hidden=8", "model.mode=finetune"], "model.base_hidden=8 needs model.head=lowrank")])
def test_bad_base_hidden_is_a_config_error_naming_the_key(override, message):
    from pafo_ray.config import ConfigError

    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, override)
