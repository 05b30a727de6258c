"""Distillation: the student's objective, its targets, and the margins stage that feeds it.

Unit tests (no Ray) check the loop and the targets with hand-worked numbers. The stage tests
run the real stages input..teachers once for the module (in-process trainers) and then the
margins and distill stages on it, including what happens when a teacher is missing or broken.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import small_overrides
from torch.testing import assert_close

from pafo_ray.config import ModelConfig, load_config
from pafo_ray.train.arrays import Cache, Rows
from pafo_ray.train.loop import Objective, PairScorer, fit
from pafo_ray.train.targets import distill_targets

NAMES = ["minority", "majority"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """In-process training on 2 shared cores: one intra-op thread (two threads spin against
    Ray's processes and ran tiny fits 10-100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------- λ = 0 is Bradley–Terry


def _rows(rng, n, num_users, n_texts, with_targets=True) -> Rows:
    chosen = rng.integers(0, n_texts, n)
    rejected = (chosen + rng.integers(1, n_texts, n)) % n_texts
    rows = Rows(user_index=torch.as_tensor(rng.integers(-1, num_users, n)),  # -1: unknown user
                group_index=torch.as_tensor((rng.random(n) < 0.3).astype(np.int64) ^ 1),
                weight=torch.as_tensor(rng.uniform(0.5, 2.0, n).astype(np.float32)),
                chosen_index=torch.as_tensor(chosen), rejected_index=torch.as_tensor(rejected))
    if with_targets:
        rows.teacher_margin = torch.as_tensor(rng.normal(0, 3, n).astype(np.float32))
        rows.distill_mask = torch.as_tensor((rng.random(n) < 0.7).astype(np.float32))
    return rows


def _fit_student(objective: Objective, train: Rows, val: Rows, cache: Cache, head: str):
    from pafo_ray.models import RewardModel

    torch.manual_seed(7)
    model_cfg = ModelConfig(head=head, rank=4, mlp_hidden=8, user_shrinkage=1e-2)
    model = RewardModel.from_config(model_cfg, [f"u{i}" for i in range(12)],
                                    input_dim=cache.vectors.shape[1])
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = fit(PairScorer(model), train, val, objective, epochs=3, batch_size=16, lr=0.05,
                  weight_decay=1e-3, group_names=NAMES, cache=cache, seed=3)
    return model, metrics, initial


@pytest.mark.parametrize("head", ["lowrank", "mlp"])
def test_lambda_zero_student_equals_the_bt_student(head):
    """Same seed, same rows: pafo with λ=0 and unit group weights takes exactly the steps of
    plain Bradley–Terry (the distillation term contributes exact zeros), while λ=1 does not."""
    rng = np.random.default_rng(0)
    cache = Cache(np.arange(30, dtype=np.int64), torch.as_tensor(rng.normal(size=(30, 6)),
                                                                 dtype=torch.float32))
    train, val = _rows(rng, 100, 12, 30), _rows(rng, 40, 12, 30, with_targets=False)
    common = dict(num_groups=2, user_shrinkage=1e-2)
    bt_model, bt_metrics, initial = _fit_student(Objective(kind="bt", **common), train, val, cache,
                                                 head)
    pafo_model, pafo_metrics, _ = _fit_student(
        Objective(kind="pafo", lam=0.0, group_weight=[1.0, 1.0], distill_loss="mse", clip=5.0,
                  **common), train, val, cache, head)
    bt_state, pafo_state = bt_model.state_dict(), pafo_model.state_dict()
    assert bt_state.keys() == pafo_state.keys()
    for name in bt_state:
        assert_close(pafo_state[name], bt_state[name], rtol=0, atol=0, msg=name)
        assert not torch.equal(bt_state[name], initial[name]), f"{name} did not train"
    timing = {"train_seconds"}
    assert {k: v for k, v in pafo_metrics.items() if k not in timing} == \
        {k: v for k, v in bt_metrics.items() if k not in timing}

    # The comparison can tell students apart: λ > 0 moves the parameters elsewhere.
    distilled, _, _ = _fit_student(
        Objective(kind="pafo", lam=1.0, group_weight=[1.0, 1.0], distill_loss="mse", clip=5.0,
                  **common), train, val, cache, head)
    differs = [n for n in bt_state if not torch.allclose(distilled.state_dict()[n], bt_state[n])]
    assert differs, "λ=1 trained the same parameters as plain BT"


# ----------------------------------------------------------------- targets


def hand_frame() -> pd.DataFrame:
    """Four rows; rows 2 and 3 have a row group that differs from their user's group.

    row  group     user_group  margin_minority  margin_majority
    0    minority  minority     2.0             -1.0
    1    majority  majority    -3.0              0.5
    2    majority  minority     4.0             -0.25
    3    minority  majority    -0.5              6.0
    """
    return pd.DataFrame({
        "group": ["minority", "majority", "majority", "minority"],
        "user_group": ["minority", "majority", "minority", "majority"],
        "margin_minority": [2.0, -3.0, 4.0, -0.5],
        "margin_majority": [-1.0, 0.5, -0.25, 6.0],
    })


# Teacher stats: minority μ=1, σ=2; majority μ=-1, σ=0.5 → pooled μ=0, σ=1.25.
STATS = {"minority": {"mean": 1.0, "std": 2.0}, "majority": {"mean": -1.0, "std": 0.5}}


def _targets(norm, scope, frame=None):
    frame = hand_frame() if frame is None else frame
    out = distill_targets(frame, {"margin_norm": norm, "scope": scope, "stats": STATS}, NAMES)
    return out["teacher_margin"].to_numpy(np.float64), out["distill_mask"].to_numpy(np.float64)


@pytest.mark.parametrize("norm, scope, margin, mask", [
    # Own group's teacher: rows 0, 3 from margin_minority; rows 1, 2 from margin_majority.
    ("none", "all", [2.0, 0.5, -0.25, -0.5], [1, 1, 1, 1]),
    # agree: the teacher's own margin > 0 (teacher prefers the chosen response).
    ("none", "agree", [2.0, 0.5, -0.25, -0.5], [1, 1, 0, 0]),
    # μ_pool + σ_pool (m − μ_g)/σ_g: 1.25·(2−1)/2 = 0.625; 1.25·(0.5+1)/0.5 = 3.75;
    # 1.25·(−0.25+1)/0.5 = 1.875; 1.25·(−0.5−1)/2 = −0.9375.
    ("standardize", "all", [0.625, 3.75, 1.875, -0.9375], [1, 1, 1, 1]),
    # Agreement is the raw margin's sign, not the standardized one's (row 2: raw −0.25 < 0
    # although its standardized target is +1.875).
    ("standardize", "agree", [0.625, 3.75, 1.875, -0.9375], [1, 1, 0, 0]),
    # minority_users: rows of minority users (0, 2) take the minority teacher and the term;
    # row 2 → margin_minority 4.0. Rows of majority users keep their own group's teacher, no term.
    ("none", "minority_users", [2.0, 0.5, 4.0, -0.5], [1, 0, 1, 0]),
    # Row 2 standardized by the minority teacher: 1.25·(4−1)/2 = 1.875.
    ("standardize", "minority_users", [0.625, 3.75, 1.875, -0.9375], [1, 0, 1, 0]),
])
def test_targets_come_from_the_rows_own_group_teacher(norm, scope, margin, mask):
    got_margin, got_mask = _targets(norm, scope)
    np.testing.assert_allclose(got_margin, margin, rtol=1e-6)
    np.testing.assert_array_equal(got_mask, mask)


def test_standardize_puts_both_teachers_on_one_scale():
    """Rows at each teacher's μ+σ get the same target μ_pool+σ_pool = 1.25 whatever the
    teacher's own spread."""
    frame = pd.DataFrame({"group": ["minority", "majority"], "user_group": ["minority", "majority"],
                          "margin_minority": [3.0, 0.0], "margin_majority": [0.0, -0.5]})
    margin, _ = _targets("standardize", "all", frame)
    np.testing.assert_allclose(margin, [1.25, 1.25], rtol=1e-6)


def test_non_finite_own_margins_fail_with_the_row_count():
    frame = hand_frame()
    frame.loc[0, "margin_minority"] = np.nan     # own teacher of row 0
    frame.loc[1, "margin_majority"] = np.inf     # own teacher of row 1
    frame.loc[2, "margin_majority"] = -np.inf    # own teacher of row 2
    with pytest.raises(RuntimeError, match=r"^3 rows have NaN/inf teacher margins"):
        _targets("none", "all", frame)
    with pytest.raises(RuntimeError, match=r"^3 rows have NaN/inf"):
        _targets("standardize", "agree", frame)


def test_non_finite_margins_of_the_other_teacher_are_ignored():
    frame = hand_frame()
    frame.loc[0, "margin_majority"] = np.nan   # row 0 is a minority row
    frame.loc[1, "margin_minority"] = np.inf   # row 1 is a majority row
    margin, mask = _targets("none", "all", frame)
    np.testing.assert_allclose(margin, [2.0, 0.5, -0.25, -0.5])


def test_missing_teacher_column_names_the_stage():
    with pytest.raises(RuntimeError, match=r"margin_majority.*pafo-ray margins"):
        distill_targets(hand_frame().drop(columns=["margin_majority"]),
                        {"margin_norm": "none", "scope": "all", "stats": STATS}, NAMES)


def test_student_loss_refuses_a_nan_target_it_would_train_on():
    from pafo_ray.losses import pafo_student_loss

    student = torch.tensor([0.5, -0.2, 1.0], requires_grad=True)
    teacher = torch.tensor([1.0, float("nan"), float("nan")])
    # NaN where the mask is off: ignored, finite loss and gradient.
    loss, _ = pafo_student_loss(student, teacher, None, torch.tensor([1.0, 0.0, 0.0]), lam=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    with pytest.raises(ValueError, match="2 rows"):
        pafo_student_loss(student, teacher, None, torch.ones(3), lam=1.0)


# ----------------------------------------------------------------- stages


def _fast_overrides(tmp_path, **extra) -> list:
    # The data and training of tests/test_teachers.py (vanilla ~0.7 validation accuracy).
    # Regularisation is chosen by its own stage, with its own tests: off here.
    values = {"data.generator.num_users": 80, "data.generator.num_prompts": 60,
              "data.generator.label_beta": "null", "train.epochs": 10,
              "train.checkpoint_every": 5, "train.lr": 0.03, "train.select_regularization": False}
    return small_overrides(tmp_path, **{**values, **extra})


def _stages_through(cfg, last: str) -> list:
    from pafo_ray.stages.base import ORDER, is_active

    active = [s for s in ORDER if is_active(cfg, s)]
    return active[:active.index(last) + 1]


@pytest.fixture(scope="module")
def teachers_run(ray_session, tmp_path_factory):
    """input..teachers on tiny data, in-process trainers; the margins stage is left to tests."""
    from pafo_ray.stages.base import StageContext, run_pipeline

    tmp = tmp_path_factory.mktemp("distill")
    cfg = load_config(None, _fast_overrides(tmp))
    ctx = StageContext.create(cfg)
    run_pipeline(ctx, _stages_through(cfg, "teachers"))
    return tmp, ctx


def _copy_run(teachers_run, name: str, **extra):
    """A copy of the module's run under another run_name, to break without side effects."""
    from pafo_ray.stages.base import StageContext

    tmp, ctx = teachers_run
    shutil.copytree(ctx.run_dir.root, tmp / "runs" / name,
                    ignore=shutil.ignore_patterns("_ray", "margins", "distill"))
    cfg = load_config(None, _fast_overrides(tmp, **{"run.run_name": name, **extra}))
    return StageContext.create(cfg)


@pytest.mark.ray
def test_margins_stage_fails_on_a_missing_teacher_checkpoint(teachers_run):
    from pafo_ray.stages.base import run_stage

    ctx = _copy_run(teachers_run, "missing")
    ctx.run_dir.remove("teachers", "minority", "config.json")
    with pytest.raises(RuntimeError, match=r"teacher 'minority'.*rerun `pafo-ray teachers --force`"):
        run_stage(ctx, "margins")
    assert not ctx.run_dir.exists("margins", "_SUCCESS.json")

    ctx.run_dir.remove("teachers", "majority", "margin_stats.json")
    ctx.run_dir.remove("teachers", "minority")
    shutil.copytree(teachers_run[1].run_dir.uri("teachers", "minority"),
                    ctx.run_dir.uri("teachers", "minority"))
    with pytest.raises(RuntimeError, match=r"majority.*margin_stats\.json.*pafo-ray teachers"):
        run_stage(ctx, "margins")


@pytest.mark.ray
def test_margins_stage_fails_on_nan_margins_with_the_row_count(teachers_run):
    from safetensors.torch import load_file, save_file

    from pafo_ray.stages.base import run_stage

    # Labelled rows only, so that the count is the prepared train + val rows.
    ctx = _copy_run(teachers_run, "nan", **{"margins.extra_pairs_per_user": 0,
                                            "distill.extra_pairs": 0})
    weights = ctx.run_dir.uri("teachers", "minority", "model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(weights).items()},
              weights, metadata={"format": "pt"})
    groups = ctx.run_dir.read_json("prepare", "summary.json")["groups"]
    scored = sum(groups["train"].values()) + sum(groups["val"].values())
    # The minority teacher scores every train and val row, so every one of them is NaN.
    with pytest.raises(RuntimeError, match=rf"^{scored} rows got NaN/inf teacher margins"):
        run_stage(ctx, "margins")
    assert not ctx.run_dir.exists("margins", "_SUCCESS.json")


@pytest.mark.ray
def test_margins_and_distill_stages(teachers_run):
    """Each margin column is that teacher's own score of the row; the student trains on the
    rows' own-group targets and beats chance on validation."""
    from pafo_ray.models import RewardModel
    from pafo_ray.stages.base import run_stage
    from pafo_ray.train.arrays import read_cache
    from pafo_ray.train.frames import read_frame

    _, ctx = teachers_run
    run_dir = ctx.run_dir
    summary = run_stage(ctx, "margins")
    groups = run_dir.read_json("prepare", "summary.json")["groups"]
    assert summary["rows"] == sum(groups["train"].values()) + sum(groups["val"].values())
    stats = run_dir.read_json("margins", "teacher_stats.json")
    for g in NAMES:
        saved = run_dir.read_json("teachers", g, "margin_stats.json")
        assert stats[g] == {"mean": saved["val_margin_mean"], "std": saved["val_margin_std"],
                            "val_accuracy": saved["val_accuracy"]}
        # The teacher's own validation accuracy (distill.teacher_init=best compares them).
        job = run_dir.teachers_summary().jobs[g]["metrics"]
        assert stats[g]["val_accuracy"] == pytest.approx(job["val_accuracy"])
        assert stats[g]["val_accuracy"] > 0.5

    rows = read_frame(run_dir.uri("margins", "rows", "split=train"))
    assert len(rows) == sum(groups["train"].values()) and rows["labelled"].all()
    # Unlabelled comparisons: ~margins.extra_pairs_per_user per user, each scored by its
    # user's group teacher (the column the student reads for that row).
    extra = read_frame(run_dir.uri("margins", "rows", "split=extra"))
    users = sum(run_dir.read_json("groups", "summary.json")["users_by_group"].values())
    per_user = ctx.cfg.margins.extra_pairs_per_user
    assert summary["extra_rows"] == len(extra)
    assert abs(len(extra) / users - per_user) < 0.1 * per_user
    assert (~extra["labelled"]).all() and (extra["row_id"] < 0).all()
    assert (extra["user_group"] == extra["group"]).all()
    assert {"margin_minority", "margin_majority", "user_group", "group"} <= set(rows)
    # user-level groups: a row's group is its user's group.
    assert (rows["user_group"] == rows["group"]).all()
    cache = read_cache(run_dir.uri("embed", "cache"))
    for g in NAMES:
        teacher = RewardModel.from_pretrained(run_dir.uri("teachers", g))
        phi = {side: cache.vectors[cache.index_of(rows[f"{side}_text_id"].to_numpy(np.int64))]
               for side in ("chosen", "rejected")}
        users = rows["user_id"].astype(str).tolist()
        expected = (teacher.score(users, [""] * len(rows), [""] * len(rows),
                                  embeddings=phi["chosen"].numpy())
                    - teacher.score(users, [""] * len(rows), [""] * len(rows),
                                    embeddings=phi["rejected"].numpy()))
        np.testing.assert_allclose(rows[f"margin_{g}"].to_numpy(), expected, rtol=1e-4, atol=1e-4)
    # The two teachers disagree somewhere: the choice of teacher matters.
    assert not np.allclose(rows["margin_minority"], rows["margin_majority"])

    distill = run_stage(ctx, "distill")
    assert distill["origin"] == "distill config"
    assert distill["settings"]["lam"] == ctx.cfg.distill.lam
    metrics = distill["student"]["metrics"]
    assert metrics["epoch"] == ctx.cfg.train.epochs
    assert metrics["val_accuracy"] > 0.58, metrics
    student = RewardModel.from_pretrained(run_dir.uri("distill", "student"))
    assert student.user_ids == RewardModel.from_pretrained(run_dir.uri("teachers", "vanilla")).user_ids
    # The student carries each user's final group (the fair cold start's group vectors).
    final = run_dir.users().set_index("user_id")["group"]
    assert student.user_groups and set(student.user_groups.values()) == set(NAMES)
    assert all(final[u] == g for u, g in student.user_groups.items())
    # ...and each group's start, chosen on its users' validation rows (summary), saved only
    # where it is not the group's vector.
    starts = distill["cold_start_starts"]["student"]
    assert set(starts) == set(NAMES) and set(student.group_vectors) == set(NAMES)
    from pafo_ray.train.frames import read_frame

    val_groups = read_frame(run_dir.prepared_rows("val"), columns=["user_id"])["user_id"].map(final)
    for g, c in starts.items():
        assert c["val_rows"] == int((val_groups == g).sum()) > 0, (g, c)
        assert set(c["val_accuracy"]) == {"group", "shared", "mean_user"}
        assert (g in student.group_starts) == (c["source"] != "group"), (g, c)


def test_teacher_init_picks_the_finetuned_set_and_its_stats():
    """teachers.init=both: distill.teacher_init=vanilla reads margin_<g>_ft and standardizes
    with the _ft teachers' stats; scratch reads the plain columns."""
    from pafo_ray.config import DistillConfig
    from pafo_ray.train.targets import target_settings

    frame = hand_frame().assign(margin_minority_ft=[10.0, 20.0, 30.0, 40.0],
                                margin_majority_ft=[-5.0, -6.0, -7.0, -8.0])
    stats = {**STATS, "minority_ft": {"mean": 0.0, "std": 1.0},
             "majority_ft": {"mean": 0.0, "std": 4.0}}
    raw = DistillConfig(margin_norm="none", teacher_init="vanilla")
    out = distill_targets(frame, target_settings(raw, "both", stats, 40), NAMES)
    np.testing.assert_allclose(out["teacher_margin"], [10.0, -6.0, -7.0, 40.0])
    scratch = DistillConfig(margin_norm="none", teacher_init="scratch")
    out = distill_targets(frame, target_settings(scratch, "both", stats, 40), NAMES)
    np.testing.assert_allclose(out["teacher_margin"], [2.0, 0.5, -0.25, -0.5])
    # _ft stats: pooled μ=0, σ=2.5; row 0: 2.5·(10−0)/1 = 25; row 1: 2.5·(−6)/4 = −3.75.
    std = DistillConfig(margin_norm="standardize", teacher_init="vanilla")
    out = distill_targets(frame, target_settings(std, "both", stats, 40), NAMES)
    np.testing.assert_allclose(out["teacher_margin"], [25.0, -3.75, -4.375, 100.0])


def test_teacher_init_without_that_teacher_set_names_the_fix():
    from pafo_ray.config import DistillConfig
    from pafo_ray.train.targets import target_settings, teacher_suffix

    assert teacher_suffix("vanilla", "auto") == "" and teacher_suffix("vanilla", "vanilla") == ""
    assert teacher_suffix("both", "auto") == "" and teacher_suffix("both", "vanilla") == "_ft"
    with pytest.raises(ValueError, match="teachers.init=both"):
        target_settings(DistillConfig(teacher_init="vanilla"), "scratch", STATS, 40)


def test_read_frame_unifies_column_types_that_differ_between_files(tmp_path):
    """A Ray Data task whose block had only nulls in a column writes it as type ``null``;
    the first file's schema alone failed the read ("Unsupported cast from double to null")."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pafo_ray.train.frames import read_frame

    folder = tmp_path / "rows" / "group=minority"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"extra_rank": pa.nulls(2), "user_id": pa.array(["a", "b"])}),
                   folder / "0.parquet")
    pq.write_table(pa.table({"extra_rank": [0.25, 0.5],
                             "user_id": pa.array(["c", "d"], pa.large_string())}), folder / "1.parquet")
    frame = read_frame(str(tmp_path / "rows")).sort_values("user_id")
    assert frame["user_id"].tolist() == ["a", "b", "c", "d"]
    assert frame["extra_rank"].isna().tolist() == [True, True, False, False]
    assert frame["extra_rank"].sum() == 0.75 and (frame["group"] == "minority").all()


def test_a_frozen_mode_fit_does_not_read_the_texts(tmp_path):
    """`skipped_columns`: frozen mode reads rows without prompt/chosen/rejected (the cache
    holds their embeddings; at 5M rows the texts were most of a frame); finetune mode keeps
    them, since it tokenizes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pafo_ray.train.frames import read_rows, skipped_columns

    folder = tmp_path / "rows" / "split=train"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"row_id": [1, 0], "user_id": ["a", "b"], "prompt": ["p", "q"],
                             "chosen": ["x", "y"], "rejected": ["z", "w"],
                             "chosen_text_id": [3, 4]}), folder / "0.parquet")
    frozen = load_config(None, ["model.mode=frozen"])
    frame = read_rows([str(folder)], skip=skipped_columns(frozen))
    assert list(frame.columns) == ["row_id", "user_id", "chosen_text_id", "split"]
    assert frame["row_id"].tolist() == [0, 1] and frame["split"].tolist() == ["train"] * 2
    finetune = load_config(None, ["model.mode=finetune"])
    assert {"prompt", "chosen", "rejected"} <= set(read_rows([str(folder)],
                                                             skip=skipped_columns(finetune)))


def test_teacher_init_best_takes_each_groups_more_accurate_teacher():
    """best: the minority's vanilla-initialised teacher is more accurate on its validation rows
    (0.62 > 0.60), the majority's scratch one (0.80 > 0.78): rows 0 and 3 (minority) read
    margin_minority_ft, rows 1 and 2 margin_majority; standardized with those teachers'
    stats: pooled μ = (0 − 1)/2 = −0.5, σ = (1 + 0.5)/2 = 0.75."""
    from pafo_ray.config import DistillConfig
    from pafo_ray.train.targets import best_teachers, target_settings

    frame = hand_frame().assign(margin_minority_ft=[10.0, 20.0, 30.0, 40.0],
                                margin_majority_ft=[-5.0, -6.0, -7.0, -8.0])
    stats = {"minority": {**STATS["minority"], "val_accuracy": 0.60},
             "majority": {**STATS["majority"], "val_accuracy": 0.80},
             "minority_ft": {"mean": 0.0, "std": 1.0, "val_accuracy": 0.62},
             "majority_ft": {"mean": 0.0, "std": 4.0, "val_accuracy": 0.78}}
    assert best_teachers(stats) == {"minority": "_ft", "majority": ""}
    raw = DistillConfig(margin_norm="none", teacher_init="best")
    out = distill_targets(frame, target_settings(raw, "both", stats, 40), NAMES)
    np.testing.assert_allclose(out["teacher_margin"], [10.0, 0.5, -0.25, 40.0])
    std = DistillConfig(margin_norm="standardize", teacher_init="best")
    out = distill_targets(frame, target_settings(std, "both", stats, 40), NAMES)
    np.testing.assert_allclose(out["teacher_margin"], [7.0, 1.75, 0.625, 29.5])
    # A tie, or an accuracy a run did not record, keeps the scratch teacher.
    tie = {**stats, "minority_ft": {**stats["minority_ft"], "val_accuracy": 0.60},
           "majority_ft": {"mean": 0.0, "std": 4.0, "val_accuracy": None}}
    assert best_teachers(tie) == {"minority": "", "majority": ""}
    with pytest.raises(ValueError, match="teachers.init=both"):
        target_settings(raw, "scratch", STATS, 40)
