"""Unlabelled comparisons for distillation: how they are drawn, selected, weighed and how their
gradient is confined to the user offsets. No Ray (the stage is tested in test_distill.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pafo_ray.data.extra import MAX_COPIES, copies_per_row, extra_rows
from pafo_ray.losses import pafo_student_loss
from pafo_ray.models.heads import RewardHead
from pafo_ray.train.targets import distill_targets

NAMES = ["minority", "majority"]


def _train_rows(n=400):
    return pd.DataFrame({"row_id": np.arange(n, dtype=np.int64) * 3 + 5,
                         "user_id": [f"u{i % 7}" for i in range(n)],
                         "prompt": [f"p{i}" for i in range(n)], "chosen": "a", "rejected": "b",
                         "chosen_text_id": np.arange(n), "rejected_text_id": np.arange(n) + n,
                         "weight": 1.0, "group": "majority", "split": "train",
                         "support_rate": 0.8, "user_type": "majority"})


USERS = pd.Series(["minority"] * 3 + ["majority"] * 7, index=[f"v{i}" for i in range(10)])


def test_copies_give_each_user_the_asked_number():
    assert copies_per_row(40, 500, 5000) == pytest.approx(4.0)
    assert copies_per_row(0, 500, 5000) == 0.0 and copies_per_row(10, 5, 0) == 0.0
    with pytest.raises(ValueError, match="extra_pairs_per_user"):
        copies_per_row(100, 10**6, 10)
    rows = extra_rows(_train_rows(), USERS, copies_per_row(60, len(USERS), 400), seed=0)
    # 60 per user expected; Bernoulli/uniform noise only.
    assert abs(len(rows) - 600) <= 40
    counts = rows["user_id"].value_counts()
    assert set(counts.index) == set(USERS.index) and counts.min() > 35


def test_extra_rows_are_labelled_false_with_own_group_and_fresh_ids():
    rows = extra_rows(_train_rows(), USERS, 2.5, seed=1)
    assert (~rows["labelled"]).all() and (rows["split"] == "extra").all()
    assert (rows["group"] == USERS.reindex(rows["user_id"]).to_numpy()).all()
    assert (rows["user_group"] == rows["group"]).all()
    assert (rows["row_id"] < 0).all() and rows["row_id"].is_unique
    rank = rows["extra_rank"].to_numpy()
    assert ((rank >= 0) & (rank < 1)).all() and 0.4 < rank.mean() < 0.6
    # Texts come from the source row: the id scheme maps back to it.
    source = (-rows["row_id"].to_numpy() - 1) // MAX_COPIES
    by_id = _train_rows().set_index("row_id")
    assert (by_id.loc[source, "chosen_text_id"].to_numpy() == rows["chosen_text_id"].to_numpy()).all()
    assert rows["support_rate"].isna().all()


def test_draws_do_not_depend_on_batching_and_follow_the_seed():
    frame = _train_rows()
    whole = extra_rows(frame, USERS, 3.3, seed=4)
    halves = pd.concat([extra_rows(frame.iloc[:123], USERS, 3.3, seed=4),
                        extra_rows(frame.iloc[123:], USERS, 3.3, seed=4)], ignore_index=True)
    pd.testing.assert_frame_equal(whole, halves)
    other = extra_rows(frame, USERS, 3.3, seed=5)
    assert not whole["user_id"].equals(other["user_id"])
    assert len(extra_rows(frame, USERS, 0.0, seed=0)) == 0


# ----------------------------------------------------------------- selection and loss


def _frame():
    """Two labelled rows and four unlabelled ones (ranks 0.1/0.6, minority and majority users)."""
    return pd.DataFrame({
        "group": ["minority", "majority", "minority", "minority", "majority", "majority"],
        "user_group": ["minority", "majority", "minority", "minority", "majority", "majority"],
        "labelled": [True, True, False, False, False, False],
        "extra_rank": [np.nan, np.nan, 0.1, 0.6, 0.1, 0.6],
        "margin_minority": [2.0, -3.0, -4.0, 1.0, 5.0, 6.0],
        "margin_majority": [-1.0, 0.5, 9.0, 9.0, -2.0, 3.0],
    })


def _select(fraction, users="all", scope="all"):
    targets = {"margin_norm": "none", "scope": scope, "stats": {}, "extra_fraction": fraction,
               "extra_users": users}
    return distill_targets(_frame(), targets, NAMES)


def test_extra_rows_are_chosen_by_rank_and_user_group():
    assert len(_select(0.0)) == 2  # no unlabelled rows
    half = _select(0.5)
    assert half["extra_rank"].fillna(0).max() == 0.1 and len(half) == 4
    np.testing.assert_allclose(half["teacher_margin"], [2.0, 0.5, -4.0, -2.0])  # own group's
    assert len(_select(1.0)) == 6
    minority = _select(1.0, users="minority")
    assert list(minority["user_group"][~minority["labelled"]]) == ["minority", "minority"]


def test_unlabelled_rows_always_distil_even_under_agree():
    out = _select(1.0, scope="agree")
    # Labelled row 1: own teacher says 0.5 > 0 (agree). Unlabelled rows have no label to agree
    # with: every one gets the term, whatever its margin's sign (row 2: -4.0).
    np.testing.assert_array_equal(out["distill_mask"], [1, 1, 1, 1, 1, 1])
    out = _select(1.0, scope="minority_users")
    np.testing.assert_array_equal(out["distill_mask"], [1, 0, 1, 1, 1, 1])


def test_extra_pairs_beyond_what_was_scored_is_refused():
    from pafo_ray.config import DistillConfig
    from pafo_ray.train.targets import target_settings

    assert target_settings(DistillConfig(extra_pairs=20), "scratch", {}, 40)["extra_fraction"] == 0.5
    with pytest.raises(ValueError, match="margins.extra_pairs_per_user=10"):
        target_settings(DistillConfig(extra_pairs=20), "scratch", {}, 10)


def test_student_loss_skips_bt_on_unlabelled_rows():
    """s = [1, -1], t = [2, 0], w = [1, 1], λ = 0.5, MSE, row 1 unlabelled:
    bt = log(1 + e^-1) / 2 = 0.156631, distill = ((1-2)² + (-1-0)²) / 2 = 1,
    loss = 0.156631 + 0.5 = 0.656631."""
    student = torch.tensor([1.0, -1.0], requires_grad=True)
    loss, metrics = pafo_student_loss(student, torch.tensor([2.0, 0.0]), None, torch.ones(2),
                                      lam=0.5, label_mask=torch.tensor([1.0, 0.0]))
    assert metrics["bt"] == pytest.approx(math.log1p(math.exp(-1)) / 2, rel=1e-6)
    assert metrics["distill"] == pytest.approx(1.0)
    assert float(loss.detach()) == pytest.approx(0.656631, rel=1e-5)
    assert metrics["accuracy"] == 1.0  # over labelled rows only
    loss.backward()
    # Row 1's gradient is the distillation term's alone: λ · 2(s - t) / Σw = 0.5 · -2 / 2.
    assert float(student.grad[1]) == pytest.approx(-0.5)


def test_objectives_other_than_pafo_refuse_unlabelled_rows():
    from pafo_ray.train.arrays import Rows
    from pafo_ray.train.loop import Objective

    rows = Rows(user_index=torch.zeros(2, dtype=torch.long), group_index=torch.zeros(2, dtype=torch.long),
                weight=torch.ones(2), label_mask=torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="unlabelled"):
        Objective(kind="bt")(torch.zeros(2), rows, None)


# ----------------------------------------------------------------- user-only gradient


@pytest.mark.parametrize("head", ["lowrank", "mlp"])
def test_user_only_rows_move_the_user_offsets_alone(head):
    torch.manual_seed(0)
    model = RewardHead(6, 4, head=head, rank=3, mlp_hidden=5)
    phi, users = torch.randn(8, 6), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    only = torch.ones(8, dtype=torch.bool)
    plain = model(phi, users)
    held = model(phi, users, user_only=only)
    torch.testing.assert_close(held, plain)  # same rewards, different gradients
    held.pow(2).sum().backward()
    for name, p in model.named_parameters():
        if name == "user_embedding.weight":
            assert p.grad is not None and p.grad.abs().sum() > 0
        else:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    model.zero_grad()
    # Mixed batch: the labelled rows still train the shared parameters.
    mixed = torch.tensor([True, False] * 4)
    model(phi, users, user_only=mixed).pow(2).sum().backward()
    shared = [p for n, p in model.named_parameters() if n != "user_embedding.weight"]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in shared)
