"""Stage ``groups``: the users' final support groups, and the rows partitioned by them.

``groups.method=support`` keeps prepare's groups. ``mixture`` (user-level groups only) starts
from them and refines them with :func:`pafo_ray.grouping.mixture_groups`: a vanilla lowrank
head with a population term is fitted in-process on the embedding cache (the run's
regularisation), its base rewards give each training row ``x = W(φ_chosen − φ_rejected)``,
and users move to the group whose population vector explains their labels best; the round
kept is the one under which the users' validation rows are most likely
(``groups.choose_round``). Every later
stage — teachers, baselines, margins, the student, tune and evaluate — reads its rows from
here, so one grouping is used everywhere (DESIGN §7: no stage recomputes it differently).

Outputs::

    groups/data/split={train,val,test}/group=<group>/*.parquet   (Ray Data rewrite)
    groups/users.parquet   user_id, train_rows, rows_<split>, user_support, support_group,
                           group, mixture_score
    groups/summary.json    rows per split and group, users per group, users moved, and —
                           when the data carries the simulator's user_type — each group's
                           share of minority-type users (a diagnostic, never an input)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pyarrow as pa

from pafo_ray.data.schema import SPLITS, group_names
from pafo_ray.layout import PREPARE
from pafo_ray.stages.base import StageContext

NAME = "groups"
SECTIONS = ("groups",)
# The grouping model: read from the model section (regularisation, rank) but always lowrank
# with a population term, whatever head the run trains.
HASHED_MODEL_FIELDS = ("rank", "user_shrinkage")


def hash_payload(cfg) -> str:
    model = {k: getattr(cfg.model, k) for k in HASHED_MODEL_FIELDS}
    return cfg.section_hash(*SECTIONS) + repr(sorted(model.items())) + repr(
        (cfg.train.epochs, cfg.train.lr, cfg.train.weight_decay, cfg.train.batch_size))


def uses_mixture(cfg) -> bool:
    return cfg.groups.method == "mixture" and cfg.prepare.group_level == "user"


def _regroup(batch: pa.Table, users_ref) -> pa.Table:
    """Replace each row's ``group`` by its user's group."""
    from pafo_ray.ray_session import fetch_once

    table = fetch_once(users_ref)
    users = batch.column("user_id").to_numpy(zero_copy_only=False).astype(str)
    groups = table.reindex(users).to_numpy(dtype=object)
    index = batch.schema.get_field_index("group")
    return batch.set_column(index, "group", pa.array(groups, pa.string()))


def grouping_model(ctx: StageContext):
    """A vanilla lowrank head with a population term fitted in-process on the embedding cache
    (the run's regularisation): ``(model, validation metrics)``."""
    from pafo_ray.train.inmemory import train_vanilla

    cfg = ctx.cfg
    model_cfg = dataclasses.replace(cfg.model, head="lowrank", population_term=True,
                                    dropout=0.0)
    return train_vanilla(cfg, weight_decay=cfg.train.weight_decay,
                         user_shrinkage=cfg.model.user_shrinkage, model_cfg=model_cfg)


def base_differences(ctx: StageContext, model, users: pd.DataFrame,
                     splits: tuple = ("train",)) -> list:
    """The grouping model's view of each split's rows: one ``(x, user_index)`` per split, with
    ``x = W(φ_chosen − φ_rejected)`` ``[n, K]`` and ``user_index`` ``[n]`` each row's position
    in ``users`` (a row of a user not there: an error naming the split). The embedding cache
    is read once for all the splits."""
    import torch

    from pafo_ray.train.arrays import read_cache
    from pafo_ray.train.frames import read_frame

    cache = read_cache(ctx.run_dir.embed_cache())
    position_of = {u: i for i, u in enumerate(users["user_id"])}
    out = []
    for split in splits:
        rows = read_frame(ctx.run_dir.prepared_rows(split),
                          columns=["user_id", "chosen_text_id", "rejected_text_id"])
        position = rows["user_id"].astype(str).map(position_of)
        if position.isna().any():
            raise ValueError(f"{int(position.isna().sum())} {split} row(s) of users missing from "
                             f"prepare's users table (first: "
                             f"{rows['user_id'][position.isna()].iloc[0]!r})")
        with torch.no_grad():
            base = model.head.base
            chosen = cache.index_of(rows["chosen_text_id"].to_numpy(np.int64))
            rejected = cache.index_of(rows["rejected_text_id"].to_numpy(np.int64))
            x = base(cache.vectors[chosen]) - base(cache.vectors[rejected])  # [n, K]
        out.append((x, torch.from_numpy(position.to_numpy(np.int64, copy=True))))
    return out


def mixture(ctx: StageContext, users: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Users with ``group`` and ``mixture_score`` refined by the mixture; and its details."""
    import torch

    from pafo_ray.grouping import mixture_groups

    cfg = ctx.cfg
    names = group_names(cfg.prepare.num_groups)
    model, metrics = grouping_model(ctx)
    by_validation = cfg.groups.choose_round == "validation"
    (x, user_index), *val = base_differences(ctx, model, users,
                                             ("train", "val") if by_validation else ("train",))
    val_x, val_index = val[0] if val else (None, None)
    index = {g: i for i, g in enumerate(names)}
    initial = torch.from_numpy(users["support_group"].map(index).to_numpy(np.int64, copy=True))
    result = mixture_groups(x, user_index, initial, iterations=cfg.groups.iterations,
                            l2=cfg.groups.l2, sizes=cfg.groups.sizes,
                            min_users=cfg.groups.min_users, val_x=val_x,
                            val_user_index=val_index)
    users = users.assign(group=np.asarray(names, dtype=object)[result.groups.numpy()],
                         mixture_score=result.score.numpy())
    details = {"grouping_model_val_accuracy": metrics.get("val_accuracy"),
               "moved_per_round": result.moved,
               "populations": result.populations.tolist(),
               "sizes": cfg.groups.sizes, "sizes_used": result.sizes_used,
               "sizes_fallback": result.fallback, "mixing_per_round": result.mixing,
               "rounds_run": len(result.moved), "round_kept": result.round_kept,
               "choose_round": cfg.groups.choose_round,
               "val_loglik_per_round": result.val_loglik}
    return users, details


def oracle_groups(users: pd.DataFrame, types: pd.Series, names: list) -> pd.DataFrame:
    """``groups.method=oracle``: minority-type users in the lowest group, the others in the
    highest — the simulator's ground truth, to measure what perfect grouping would close.
    ``types``: user_type by user_id. A diagnostic only; never a default."""
    if types is None or types.isna().all():
        raise ValueError("groups.method=oracle needs the data's user_type column (simulated "
                         "data: builtin, dsp, personalllm); this data has none")
    if len(names) != 2:
        raise ValueError(f"groups.method=oracle needs prepare.num_groups=2, got {len(names)}")
    user_type = types.reindex(users["user_id"].astype(str)).to_numpy()
    group = np.where(user_type == "minority", names[0], names[-1]).astype(object)
    return users.assign(group=group, mixture_score=np.nan)


def _train_user_types(run_dir) -> pd.Series:
    from pafo_ray.train.inmemory import read_frame

    rows = read_frame(run_dir.prepared_rows("train"), columns=["user_id", "user_type"])
    if "user_type" not in rows:
        return None
    return rows.assign(user_id=rows["user_id"].astype(str)).groupby("user_id")["user_type"].first()


def run(ctx: StageContext) -> dict:
    import ray
    import ray.data

    cfg, run_dir = ctx.cfg, ctx.run_dir
    names = group_names(cfg.prepare.num_groups)
    users = run_dir.users(PREPARE).rename(columns={"group": "support_group"})
    details: dict = {}
    if uses_mixture(cfg):
        users, details = mixture(ctx, users)
        how = (f"mixture of {len(names)} population vectors, "
               + (f"round {details['round_kept']} of {details['rounds_run']} kept on validation"
                  if details["val_loglik_per_round"] else f"{details['rounds_run']} rounds")
               + f", sizes by {details['sizes_used']}")
        if details["sizes_fallback"]:
            how += f" ({details['sizes_fallback']})"
    elif cfg.groups.method == "oracle" and cfg.prepare.group_level == "user":  # a diagnostic
        users = oracle_groups(users, _train_user_types(run_dir), names)
        how = "ORACLE: the simulator's true user types (a diagnostic, not a method)"
    else:
        users = users.assign(group=users["support_group"], mixture_score=np.nan)
        how = ("row-level support groups, kept" if cfg.prepare.group_level == "row"
               else "user support (prepare's groups)")
    run_dir.write_users(NAME, users)

    ds = ray.data.read_parquet(run_dir.prepared_splits(SPLITS))
    if cfg.prepare.group_level == "user":
        ref = ray.put(users.set_index("user_id")["group"])
        ds = ds.map_batches(_regroup, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"users_ref": ref})
    ds.write_parquet(run_dir.grouped_data(), partition_cols=["split", "group"])
    return {"how": how, "group_level": cfg.prepare.group_level, "group_names": names,
            "groups": _row_counts(ctx, users, names), **_user_counts(users, names), **details,
            "user_types": _user_types(run_dir, users, names)}


def _row_counts(ctx: StageContext, users: pd.DataFrame, names: list) -> dict:
    """Rows per split and group: from the users' per-split counts (user level), else prepare's."""
    if ctx.cfg.prepare.group_level != "user":
        return ctx.run_dir.prepare_summary().rows_by_group
    out: dict = {}
    for split in SPLITS:
        counts = users.groupby("group")[f"rows_{split}"].sum()
        out[split] = {g: int(counts.get(g, 0)) for g in names if int(counts.get(g, 0))}
    return {s: c for s, c in out.items() if c}


def _user_counts(users: pd.DataFrame, names: list) -> dict:
    if users["group"].isna().all():  # row-level groups: a user has no single group
        return {}
    by_group = users["group"].value_counts()
    moved = users["group"] != users["support_group"]
    return {"users_by_group": {g: int(by_group.get(g, 0)) for g in names},
            "users_moved": int(moved.sum()),
            "moved_from_support": {g: int((moved & (users["support_group"] == g)).sum())
                                   for g in names}}


def _user_types(run_dir, users: pd.DataFrame, names: list) -> dict:
    """Share of minority-type users per group when the data carries user_type (simulators)."""
    from pafo_ray.train.frames import read_frame

    if users["group"].isna().all():
        return {}
    rows = read_frame(run_dir.prepared_rows("train"), columns=["user_id", "user_type"])
    if "user_type" not in rows or rows["user_type"].isna().all():
        return {}
    types = rows.assign(user_id=rows["user_id"].astype(str)).groupby("user_id")["user_type"].first()
    frame = users.assign(user_type=types.reindex(users["user_id"]).to_numpy())
    out = {}
    for column in ("support_group", "group"):
        shares = {}
        for g in names:
            of_group = frame[frame[column] == g]
            if len(of_group):
                shares[g] = round(float((of_group["user_type"] == "minority").mean()), 4)
        out[column] = shares
    return {"minority_type_share": out}


def describe(summary: dict) -> str:
    users = summary.get("users_by_group")
    text = f"{summary['how']}"
    if users:
        text += f"; users {users}, {summary['users_moved']} moved from their support group"
    shares = (summary.get("user_types") or {}).get("minority_type_share")
    if shares:
        text += (f"; minority-type share of the lowest group {shares['support_group'].get(summary['group_names'][0])}"
                 f" -> {shares['group'].get(summary['group_names'][0])}")
    return text
