"""Hand-computed checks of every loss in pafo_ray.losses (numbers worked out in docstrings)."""

import math

import pytest
import torch
from torch.testing import assert_close

from pafo_ray.losses import (
    FaroConstraint,
    GroupDRO,
    bernoulli_kl,
    bradley_terry_loss,
    demographic_parity_gap,
    distill_loss,
    dual_ascent_step,
    equalized_odds_gaps,
    fairness_penalty_loss,
    group_mean_losses,
    inverse_frequency_weights,
    margin_mse,
    pafo_student_loss,
    weighted_mean,
)

TOL = dict(rtol=1e-6, atol=1e-6)


def t(*values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def test_bradley_terry_hand_values():
    """BT(0) = log 2 = 0.693147; BT(2) = log(1 + e^-2) = 0.126928; BT(-2) = log(1 + e^2) = 2.126928."""
    assert_close(bradley_terry_loss(t(0.0, 2.0, -2.0)),
                 t(0.6931471805599453, 0.1269280110429725, 2.1269280110429727), **TOL)


def test_bradley_terry_extreme_margins_are_finite():
    """BT(1e4) = 0 and BT(-1e4) = 1e4; gradients -σ(-m) = -0 and -1, finite in float32."""
    margin = torch.tensor([1e4, -1e4], requires_grad=True)
    loss = bradley_terry_loss(margin)
    assert_close(loss, torch.tensor([0.0, 1e4]))
    loss.sum().backward()
    assert torch.isfinite(margin.grad).all()
    assert_close(margin.grad, torch.tensor([0.0, -1.0]))


def test_margin_mse_with_and_without_clip():
    """s = [3, -1, 0.5], t = [1, 2, 0.5].
    No clip: [(3-1)², (-1-2)², 0] = [4, 9, 0].
    clip 2: s → [2, -1, 0.5], t unchanged → [1, 9, 0]; ∂/∂s_0 = 0 (clamped), ∂/∂s_1 = 2(-1-2) = -6.
    """
    s, target = t(3.0, -1.0, 0.5, grad=True), t(1.0, 2.0, 0.5)
    assert_close(margin_mse(s, target), t(4.0, 9.0, 0.0), **TOL)
    clipped = margin_mse(s, target, clip=2.0)
    assert_close(clipped, t(1.0, 9.0, 0.0), **TOL)
    clipped.sum().backward()
    assert_close(s.grad, t(0.0, -6.0, 0.0), **TOL)
    with pytest.raises(ValueError, match="clip"):
        margin_mse(s, target, clip=0.0)


def test_bernoulli_kl_hand_values_and_temperature():
    """p = σ(t/T), q = σ(s/T).
    s = t → 0. s = 0, t = 2, T = 1: p = 0.880797, KL = p log(2p) + (1-p) log(2(1-p)) = 0.327813.
    s = 0, t = 4, T = 2: the same Bernoullis, times T² = 4 → 1.311253.
    s = 1, t = -1, T = 1: log(p/q) = -1, log((1-p)/(1-q)) = 1 → KL = 1 - 2σ(-1) = 0.462117.
    ∂KL/∂s = T (q - p): at s = 0, t = 4, T = 2 → 2 (0.5 - 0.880797) = -0.761594.
    """
    assert_close(bernoulli_kl(t(0.7, -3.0), t(0.7, -3.0)), t(0.0, 0.0), **TOL)
    assert_close(bernoulli_kl(t(0.0), t(2.0)), t(0.3278133254727375), **TOL)
    assert_close(bernoulli_kl(t(1.0), t(-1.0)), t(0.46211715726000974), **TOL)
    s = t(0.0, grad=True)
    scaled = bernoulli_kl(s, t(4.0), temperature=2.0)
    assert_close(scaled, t(1.31125330189095), **TOL)
    scaled.sum().backward()
    assert_close(s.grad, t(-0.7615941559557646), **TOL)
    assert (bernoulli_kl(t(0.1, 5.0), t(-0.1, 4.0)) > 0).all()


def test_bernoulli_kl_extreme_margins_are_finite():
    """|s|, |t| = 1e4 in float32. s = 1e4, t = -1e4: p = 0, log(1 - q) = logsigmoid(-1e4) = -1e4,
    so KL = 1·(0 - (-1e4)) = 1e4 (symmetric case the same); equal margins → 0; gradients finite."""
    s = torch.tensor([1e4, -1e4, 1e4], requires_grad=True)
    target = torch.tensor([-1e4, 1e4, 1e4])
    kl = bernoulli_kl(s, target)
    assert torch.isfinite(kl).all()
    assert_close(kl, torch.tensor([1e4, 1e4, 0.0]))
    kl.sum().backward()
    assert torch.isfinite(s.grad).all()


def test_distill_loss_dispatch():
    s, target = t(0.0), t(2.0)
    assert_close(distill_loss(s, target, "mse"), t(4.0))
    assert_close(distill_loss(s, target, "kl"), bernoulli_kl(s, target))
    with pytest.raises(ValueError, match="'mse' or 'kl'"):
        distill_loss(s, target, "l1")


def test_weighted_mean():
    """v = [1, 2, 4], w = [1, 1, 2] → (1 + 2 + 8) / 4 = 2.75."""
    assert_close(weighted_mean(t(1.0, 2.0, 4.0), t(1.0, 1.0, 2.0)), t(2.75)[0])
    with pytest.raises(ValueError, match="sum to 0"):
        weighted_mean(t(1.0), t(0.0))


def test_pafo_student_loss_hand_values_with_nan_teacher():
    """s = [0, 2], t = [1, NaN], w = [1, 3], mask = [1, 0], λ = 0.5, MSE.
    BT = [log 2, log(1 + e^-2)] → bt = (0.693147 + 3·0.126928) / 4 = 0.268483.
    D = [(0 - 1)², masked] → distill = 1·1 / 4 = 0.25; loss = bt + 0.5·0.25 = 0.393483.
    ∂L/∂s_0 = (1/4)(-σ(0) + 0.5·2·(0 - 1)) = -0.375; ∂L/∂s_1 = (3/4)(-σ(-2)) = -0.089402.
    """
    s = t(0.0, 2.0, grad=True)
    loss, metrics = pafo_student_loss(s, t(1.0, float("nan")), t(1.0, 3.0),
                                      torch.tensor([True, False]), lam=0.5, kind="mse")
    assert_close(loss, torch.tensor(0.3934828034222157, dtype=torch.float64), **TOL)
    assert metrics["bt"] == pytest.approx(0.2684828034222157)
    assert metrics["distill"] == pytest.approx(0.25)
    assert metrics["distill_fraction"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(0.5)  # margin 0 is a tie, not correct
    loss.backward()
    assert torch.isfinite(s.grad).all()
    assert_close(s.grad, t(-0.375, -0.08940219151658815), **TOL)


@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_pafo_nan_teacher_masked_for_both_kinds(kind):
    s = t(0.3, -1.0, 2.0, grad=True)
    loss, _ = pafo_student_loss(s, t(float("nan"), 1.0, float("nan")), None,
                                torch.tensor([0.0, 1.0, 0.0]), lam=1.0, kind=kind, clip=5.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_pafo_lambda_zero_is_pure_bradley_terry():
    """λ = 0: L = Σ w BT / Σ w whatever the teacher says."""
    torch.manual_seed(0)
    s, target, w = torch.randn(8), torch.randn(8), torch.rand(8) + 0.1
    loss, metrics = pafo_student_loss(s, target, w, torch.ones(8, dtype=torch.bool), lam=0.0)
    assert_close(loss, weighted_mean(bradley_terry_loss(s), w))
    assert metrics["loss"] == pytest.approx(metrics["bt"])


def test_pafo_rejects_nan_teacher_where_distilled():
    with pytest.raises(ValueError, match="non-finite teacher_margin"):
        pafo_student_loss(t(0.0), t(float("nan")), None, torch.tensor([True]), lam=1.0)


def test_inverse_frequency_weights():
    """groups [0, 0, 0, 1] (n = [3, 1], N = 4, 2 groups): w = N / (2 n_g) = [2/3, 2];
    mean row weight (3·2/3 + 2) / 4 = 1. A third, empty group gets 0."""
    weights = inverse_frequency_weights(torch.tensor([0, 0, 0, 1]), 3)
    assert_close(weights, torch.tensor([2 / 3, 2.0, 0.0]))
    assert_close(weights[torch.tensor([0, 0, 0, 1])].mean(), torch.tensor(1.0))


def test_reweight_power_interpolates_between_vanilla_and_inverse_frequency():
    """n = [3, 1], N = 4. p = 0: every row 1. p = 0.5: w_g = N n_g^-0.5 / Σ n_h^0.5
    = 4 / (√3 + 1) · [1/√3, 1] = [0.845299, 1.464102]; mean row weight 1."""
    groups = torch.tensor([0, 0, 0, 1])
    assert_close(inverse_frequency_weights(groups, 2, power=0.0), torch.tensor([1.0, 1.0]))
    half = inverse_frequency_weights(groups, 2, power=0.5)
    assert_close(half, torch.tensor([0.845299, 1.464102]))
    assert_close(half[groups].mean(), torch.tensor(1.0))
    assert_close(inverse_frequency_weights(groups, 2, power=1.0), torch.tensor([2 / 3, 2.0]))
    with pytest.raises(ValueError, match="power"):
        inverse_frequency_weights(groups, 2, power=-1.0)


def test_group_mean_losses():
    """ℓ = [1, 3, 1], groups [0, 0, 1], 3 groups → L = [2, 1, 0], present [T, T, F]."""
    means, present = group_mean_losses(t(1.0, 3.0, 1.0), torch.tensor([0, 0, 1]), 3)
    assert_close(means, t(2.0, 1.0, 0.0))
    assert present.tolist() == [True, True, False]


def test_group_dro_two_steps():
    """η = 1, q = [1/2, 1/2].
    Step 1: ℓ = [1, 3 | 1] → L = [2, 1]; q ∝ [e², e] → [e/(1+e), 1/(1+e)] = [0.731059, 0.268941];
            loss = 2·0.731059 + 1·0.268941 = 1.731059.
    Step 2: ℓ = [0 | 2] → L = [0, 2]; q ∝ [e/(1+e)·1, 1/(1+e)·e²] → [1/(1+e), e/(1+e)];
            loss = 0·0.268941 + 2·0.731059 = 1.462117.
    Step 3: only group 0 present, ℓ = [5] → q_1 unchanged in ratio, loss = L_0 = 5.
    """
    dro = GroupDRO(num_groups=2, step_size=1.0)
    e = math.e
    loss = dro(t(1.0, 3.0, 1.0), torch.tensor([0, 0, 1]))
    assert_close(loss, torch.tensor(1.7310585786300048, dtype=torch.float64), **TOL)
    assert_close(dro.q, torch.tensor([e / (1 + e), 1 / (1 + e)]))
    loss = dro(t(0.0, 2.0), torch.tensor([0, 1]))
    assert_close(loss, torch.tensor(1.4621171572600098, dtype=torch.float64), **TOL)
    assert_close(dro.q, torch.tensor([1 / (1 + e), e / (1 + e)]))
    assert_close(dro(t(5.0), torch.tensor([0])), t(5.0)[0])


def test_group_dro_gradient_and_eval_freezes_q():
    """Gradient of step 1 = q_g / n_g per row: [0.731059/2, 0.731059/2, 0.268941]."""
    dro = GroupDRO(num_groups=2, step_size=1.0)
    losses = t(1.0, 3.0, 1.0, grad=True)
    dro(losses, torch.tensor([0, 0, 1])).backward()
    assert_close(losses.grad, t(0.36552928931500245, 0.36552928931500245, 0.2689414213699951),
                 **TOL)
    q_before = dro.q.clone()
    dro.eval()
    dro(t(9.0, 0.0), torch.tensor([0, 1]))
    assert_close(dro.q, q_before)
    assert "q" in dro.state_dict()


def test_fairness_penalty_hand_values():
    """ℓ = [1, 3, 1], groups [0, 0, 1], α = 0.5: mean 5/3 + 0.5·(2 - 1) = 2.166667.
    One group present: penalty 0 → the mean. ∂/∂ℓ = 1/3 + α·[1/2, 1/2, -1] = [7/12, 7/12, -1/6].
    """
    losses = t(1.0, 3.0, 1.0, grad=True)
    value = fairness_penalty_loss(losses, torch.tensor([0, 0, 1]), 2, alpha=0.5)
    assert_close(value, torch.tensor(13 / 6, dtype=torch.float64), **TOL)
    value.backward()
    assert_close(losses.grad, t(7 / 12, 7 / 12, -1 / 6), **TOL)
    single = fairness_penalty_loss(t(1.0, 3.0), torch.tensor([1, 1]), 2, alpha=10.0)
    assert_close(single, t(2.0)[0])


# ------------------------------------------------------------------ Faro


def _faro_batch():
    """Margins [0, ln 3, 0, −ln 3] → σ = [0.5, 0.75, 0.5, 0.25]; groups [1, 1, 0, 0]
    (0 = minority); label classes [1, 0, 1, 0]."""
    return (t(0.0, math.log(3.0), 0.0, -math.log(3.0), grad=True), torch.tensor([1, 1, 0, 0]),
            torch.tensor([1, 0, 1, 0]))


def test_demographic_parity_gap_hand_values():
    """P̄_maj = (0.5 + 0.75)/2 = 0.625, P̄_min = (0.5 + 0.25)/2 = 0.375: c_DP = 0.25.
    ∂c/∂m_i = ±σ'(m_i)/n_g with σ' = σ(1 − σ): majority +[0.25, 0.1875]/2, minority −[0.25, 0.1875]/2.
    One group present: 0."""
    margin, group, _ = _faro_batch()
    gap = demographic_parity_gap(margin, group, 2)
    assert_close(gap, torch.tensor(0.25, dtype=torch.float64), **TOL)
    gap.backward()
    assert_close(margin.grad, t(0.125, 0.09375, -0.125, -0.09375), **TOL)
    assert float(demographic_parity_gap(t(1.0, -3.0), torch.tensor([1, 1]), 2)) == 0.0


def test_equalized_odds_gaps_hand_values():
    """Class 0: rows 1 (maj, 0.75) and 3 (min, 0.25) → 0.5. Class 1: rows 0 and 2, both 0.5 → 0.
    DP pools the classes (0.25); EO keeps them apart."""
    margin, group, label = _faro_batch()
    assert_close(equalized_odds_gaps(margin, group, label, 2), t(0.5, 0.0), **TOL)


def test_dual_ascent_step_rises_when_violated_and_stops_at_zero():
    """μ = 0, c = 0.25, ε = 0.05, η = 2: μ = 2·0.2 = 0.4. μ = 0.1, c = 0, η = 4: 0.1 − 0.2 → 0."""
    assert_close(dual_ascent_step(t(0.0), t(0.25), 0.05, 2.0), t(0.4), **TOL)
    assert_close(dual_ascent_step(t(0.1), t(0.0), 0.05, 4.0), t(0.0), **TOL)


def test_faro_constraint_one_step_by_hand():
    """BT = mean[log 2, log(4/3), log 2, log 4] = (2·0.693147 + 0.287682 + 1.386294)/4 = 0.765068.
    Step 1 (μ = 0): loss = BT; then μ ← 0 + 2·(0.25 − 0.05) = 0.4.
    Step 2 (same batch): loss = BT + 0.4·0.2 = 0.845068; μ ← 0.8.
    eval(): μ is frozen. faro_eo has one multiplier per label class: [2·0.45, 0]."""
    margin, group, label = _faro_batch()
    faro = FaroConstraint(2, "dp", epsilon=0.05, dual_lr=2.0)
    bt = (2 * math.log(2) + math.log(4 / 3) + math.log(4)) / 4
    assert_close(faro(margin, group), torch.tensor(bt, dtype=torch.float64), **TOL)
    assert_close(faro.multipliers, torch.tensor([0.4]), **TOL)
    assert_close(faro(margin, group), torch.tensor(bt + 0.08, dtype=torch.float64), **TOL)
    assert_close(faro.multipliers, torch.tensor([0.8]), **TOL)
    faro.eval()
    faro(margin, group)
    assert_close(faro.multipliers, torch.tensor([0.8]), **TOL)
    faro.train()
    eo = FaroConstraint(2, "eo", epsilon=0.05, dual_lr=2.0)
    eo(margin, group, label=label)
    assert_close(eo.multipliers, torch.tensor([0.9, 0.0]), **TOL)
    with pytest.raises(ValueError, match="label"):
        eo(margin, group)
    # float32 (the trainer's dtype): backward after the in-place dual step still works.
    single = torch.tensor([0.0, 1.0, 0.0, -1.0], requires_grad=True)
    for _ in range(2):
        faro(single, group).backward()
    assert torch.isfinite(single.grad).all()
    with pytest.raises(ValueError, match="'dp' or 'eo'"):
        FaroConstraint(2, "spread")


def _faro_toy(dual_lr: float, steps: int = 1500):
    """θ shared by 80 majority rows (margin θ) and 20 minority rows (margin −θ/2): BT alone
    drives θ to ≈ 2.3 (DP gap σ(θ) − σ(−θ/2) ≈ 0.67); the constraint gap ≤ ε = 0.1 holds for
    θ ≤ 0.27. Full-batch gradient descent on θ, dual ascent on μ."""
    x = torch.cat([torch.ones(80), torch.full((20,), -0.5)]).double()
    group = torch.cat([torch.ones(80, dtype=torch.long), torch.zeros(20, dtype=torch.long)])
    theta = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([theta], lr=0.5)
    faro = FaroConstraint(2, "dp", epsilon=0.1, dual_lr=dual_lr)
    gaps, multipliers = [], []
    for _ in range(steps):
        margin = theta * x
        gaps.append(float(demographic_parity_gap(margin.detach(), group, 2)))
        loss = faro(margin, group)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        multipliers.append(float(faro.multipliers[0]))
    return gaps, multipliers


def test_faro_dual_ascent_drives_the_dp_gap_below_epsilon():
    gaps, mu = _faro_toy(dual_lr=0.5)
    # The multiplier rises on every step the constraint is violated (by more than float32's
    # resolution of μ: at the end the gap sits at ε and μ at its fixed point) ...
    violated = [i for i, g in enumerate(gaps) if g > 0.1 + 1e-4]
    rises = [mu[i] > (mu[i - 1] if i else 0.0) for i in violated]
    assert all(rises)
    assert len(violated) > 10 and mu[-1] > 0.5
    # ... the gap, first above 0.3, falls below ε and ends at it (μ ≈ 0.79 holds it there).
    first_below = next(i for i, g in enumerate(gaps) if i > violated[0] and g < 0.1)
    assert max(gaps[:first_below]) > 0.3
    assert max(gaps[-300:]) < 0.1 + 1e-3
    # Without dual ascent (η = 0) the same constraint is ignored: the gap stays > 0.6.
    unconstrained, mu0 = _faro_toy(dual_lr=0.0)
    assert min(unconstrained[-300:]) > 0.6 and max(mu0) == 0.0
