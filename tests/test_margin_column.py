"""The data's ``margin`` column as TRL / OpenRLHF use it: BT on ``m − margin``, only with
``train.use_margin`` (hand-checked numbers)."""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import nn
from torch.testing import assert_close

from pafo_ray.config import PipelineConfig, load_config
from pafo_ray.losses import bradley_terry_loss, pafo_student_loss
from pafo_ray.train.arrays import build_rows
from pafo_ray.train.loop import Objective

M = torch.tensor([1.0, 0.0, -2.0])
OFFSET = torch.tensor([0.5, -1.0, 0.0])
# -log σ(m - offset) = log(1 + e^-(m - offset)) at m - offset = 0.5, 1, -2:
EXPECTED = [math.log1p(math.exp(-0.5)), math.log1p(math.exp(-1.0)), math.log1p(math.exp(2.0))]


def test_bt_on_m_minus_margin_hand_values():
    assert_close(bradley_terry_loss(M, OFFSET), torch.tensor(EXPECTED))
    assert [round(v, 6) for v in EXPECTED] == [0.474077, 0.313262, 2.126928]
    # Without an offset: BT(m) as before: log(1+e^-1), log 2, log(1+e^2).
    assert_close(bradley_terry_loss(M), torch.tensor([0.313262, 0.693147, 2.126928]),
                 atol=1e-6, rtol=0)


def test_student_loss_offsets_the_bt_term_only():
    mask = torch.zeros(3)
    loss, metrics = pafo_student_loss(M, torch.full((3,), float("nan")), None, mask, lam=1.0,
                                      label_offset=OFFSET)
    assert math.isclose(metrics["bt"], sum(EXPECTED) / 3, rel_tol=1e-6)
    assert math.isclose(metrics["accuracy"], 1 / 3, rel_tol=1e-6)  # on the raw margin


def _frame():
    return pd.DataFrame({"user_id": ["u"] * 3, "group": ["majority"] * 3, "weight": [1.0] * 3,
                         "margin": [0.5, -1.0, None]})


def test_objective_uses_the_column_only_when_asked():
    used = build_rows(_frame(), users={"u": 0}, group_names=["minority", "majority"],
                      label_margin=True)
    unused = build_rows(_frame(), users={"u": 0}, group_names=["minority", "majority"])
    assert unused.label_margin is None
    assert_close(used.label_margin, torch.tensor([0.5, -1.0, 0.0]))  # missing: 0
    loss, _ = Objective(kind="bt")(M, used, nn.Module())
    expected = (EXPECTED[0] + EXPECTED[1] + math.log1p(math.exp(2.0))) / 3
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    plain, _ = Objective(kind="bt")(M, unused, nn.Module())
    assert math.isclose(plain.item(), (0.313262 + 0.693147 + 2.126928) / 3, rel_tol=1e-5)
    # A slice of the rows keeps the offsets.
    assert_close(used.take(torch.tensor([1])).label_margin, torch.tensor([-1.0]))


def test_use_margin_is_an_optional_config_key():
    assert PipelineConfig().train.use_margin is False
    assert load_config(None, ["train.use_margin=true"]).train.use_margin is True
