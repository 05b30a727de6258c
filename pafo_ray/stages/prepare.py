"""Stage ``prepare`` on Ray Data: validate, support rates, groups, splits.

    chunks ─read+validate─▶ votes, sorted by hash partition ─▶ object store    (Ray Data map)
    partition p ◀─ its slice of every vote block ─ count ─▶ object store       (a Ray task per p)
    chunks ─read+validate─▶ take back each row's support by row_id ─▶ groups ─▶ parquet (map+write)

Only narrow *votes* of valid rows (row id, comparison key, user, direction, split, given
support: ~50 bytes a row against ~700 with the texts) are shuffled: every vote on a
comparison lands in one hash partition, where support rates, duplicates and first rows of
comparisons are a local numpy group-by. One Ray task per partition takes its slice of
every vote block from the object store (zero-copy on a node; on a cluster each node pulls
the blocks once, ~50 bytes a row) and leaves its counts there, sorted by row id. The
second pass reads each chunk again (texts and text ids now), takes its rows' results back
by row id, labels and writes in the same task: the full rows stream from input to output
and never wait in a shuffle, so memory follows the object store and the narrow votes,
not the texts. No row comes to the driver. User-level groups need each user's mean
training support first: a Ray Data map over the counts gives per-user sums (users, not
rows, come to the driver). Each write task hands back narrow aggregates of the block it
wrote (per user, and the block's counts: :mod:`pafo_ray.data.sink`) for ``users.parquet``
and the summary. Output:

    prepare/data/split={train,val,test}/group=<group>/*.parquet
    prepare/data/split=set_aside/group=<reason>/*.parquet   (nothing is dropped)
    prepare/users.parquet   prepare/summary.json
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pafo_ray.data import support as support_lib
from pafo_ray.data.schema import group_names
from pafo_ray.data.sources import DataValidationError
from pafo_ray.redact import redact_uri
from pafo_ray.stages.base import StageContext

NAME = "prepare"
SECTIONS = ("data", "prepare")


def formats_of(cfg) -> dict:
    """How :func:`pafo_ray.data.formats.normalize_preferences` reads the input's columns."""
    data = cfg.data
    return dict(columns=dict(data.columns), prompt_boundary=data.prompt_boundary,
                chat_backbone=cfg.model.backbone if data.chat_template == "auto" else None)


def hash_payload(cfg) -> str:
    """data + prepare; a conversational input is rendered with the backbone's chat template,
    so a file input's prepared rows follow model.backbone too (with data.chat_template=auto)."""
    own = cfg.section_hash("data", "prepare")
    if cfg.data.source in ("parquet", "jsonl", "hf") and cfg.data.chat_template == "auto":
        own += "|" + cfg.model.backbone
    return own


def _read_validated(batch: pa.Table, *, strict, split_seed, val_fraction, test_fraction,
                    formats=None) -> list:
    """Every chunk of ``batch`` read and validated, one table per chunk."""
    from pafo_ray.data.formats import normalize_preferences
    from pafo_ray.data.sources import read_chunk
    from pafo_ray.data.validate import validate_table

    tables = []
    for chunk in batch.to_pylist():
        chunk = {k: v for k, v in chunk.items() if v is not None}
        raw = read_chunk(chunk)
        try:
            raw = normalize_preferences(raw, source=redact_uri(chunk["path"]), **(formats or {}))
        except ValueError as exc:  # a format problem: same error type as every other bad input
            raise DataValidationError(str(exc)) from None
        tables.append(validate_table(raw, strict=strict, split_seed=split_seed,
                                     val_fraction=val_fraction, test_fraction=test_fraction))
    return tables


def _read_votes(batch: pa.Table, *, partitions: int, **validate) -> pa.Table:
    """Pass 1: the narrow votes of the chunks' valid rows (no texts)."""
    return support_lib.votes_of(pa.concat_tables(_read_validated(batch, **validate)), partitions)


def _count(partition: int, *blocks: pa.Table, **kwargs) -> pa.Table:
    """Pass 1's reduce (a Ray task): count the votes of one hash partition, its slice of every
    block. The blocks come as task arguments (zero-copy views of the object store), so
    they are released when the task ends; captured in a Ray Data map's ``fn_kwargs`` they
    stayed pinned after the stage (the map's serialised UDF holds them)."""
    return support_lib.count_votes(support_lib.partition_of(list(blocks), partition), **kwargs)


def _read_label(batch: pa.Table, *, votes: list, validate: dict, label: dict) -> pa.Table:
    """Pass 2: read and validate the chunks again, take their votes' support back, label."""
    import ray

    blocks = ray.get(votes)  # zero-copy views of the object store
    tables = []
    for table in _read_validated(batch, **validate):
        valid = table.column("row_id").to_numpy()[
            table.column("set_aside_reason").to_numpy(zero_copy_only=False) == ""]
        found = support_lib.gather_votes(blocks, valid)
        tables.append(support_lib.attach_support(table, found, strict=validate["strict"]))
    return _label(pa.concat_tables(tables), **label)


def _label(batch: pa.Table, *, level, tau, names, users_ref=None) -> pa.Table:
    """Add ``group`` (and ``user_support``); set-aside rows go to split=set_aside/group=reason."""
    reason = batch.column("set_aside_reason").to_numpy(zero_copy_only=False).astype(object)
    support = batch.column("support_rate").to_numpy(zero_copy_only=False)
    few = batch.column("few_raters").to_numpy(zero_copy_only=False)
    if users_ref is not None:  # look each distinct user up once
        from pafo_ray.data.schema import encode

        table = _user_table(users_ref)
        users = encode(pc.fill_null(batch.column("user_id"), ""))
        at = table.index.get_indexer(users.values)
        known = at >= 0
        user_support = np.where(known, table["user_support"].to_numpy(np.float64)[at], np.nan)[users.codes]
    else:
        user_support = np.full(batch.num_rows, np.nan)
    if level == "user":  # users with no kept row have no group (their rows are set aside)
        groups = np.where(known, table["group"].to_numpy(object)[at], None)[users.codes]
    else:
        groups = support_lib.row_groups(np.nan_to_num(support, nan=1.0), few, tau, names)
    bad = reason != ""
    groups = np.where(bad, reason, groups)
    split = np.where(bad, "set_aside", batch.column("split").to_numpy(zero_copy_only=False))
    batch = batch.set_column(batch.schema.get_field_index("split"), "split",
                             pa.array(split, pa.string()))
    return (batch.append_column("user_support", pa.array(user_support, pa.float64()))
            .append_column("group", pa.array(groups, pa.string())))


def _user_table(ref) -> pd.DataFrame:
    from pafo_ray.ray_session import fetch_once

    return fetch_once(ref)


SPLITS = ("train", "val", "test")
USER_SUMS = ["rows", "train_rows", "train_support"] + [f"rows_{s}" for s in SPLITS]
_PARTIAL_COLUMNS = ["user_id", "split", "support_rate", "set_aside_reason", "few_raters",
                    "first_of_comparison"]


def _partials(batch: pa.Table) -> pa.Table:
    """One pass over a block, two kinds of partial sums.

    Per user (kept rows only): ``rows``, ``rows_<split>``, ``train_rows`` and
    ``train_support`` (few-rater rows left out of the support). Plus one row whose
    ``user_id`` is empty (never a kept row's: blank ids are set aside) and whose ``stats``
    holds the block's counts as JSON: rows by (split, group) — when the rows carry no group
    yet (user level, before labelling) only the set-aside rows, by reason, since a kept
    row's group is its user's —, the support histogram, first rows of comparisons per split
    and few-rater rows.
    """
    frame = batch.to_pandas()
    bad = frame["set_aside_reason"] != ""
    valid = frame[~bad]
    train = (valid["split"] == "train") & ~valid["few_raters"]
    sums = valid.assign(rows=1, train_rows=train.astype(np.int64),
                        train_support=np.where(train, valid["support_rate"], 0.0),
                        **{f"rows_{s}": (valid["split"] == s).astype(np.int64) for s in SPLITS})
    out = sums.groupby("user_id", sort=False)[USER_SUMS].sum().reset_index()
    if "group" in frame:
        counts = [[s, g, int(n)] for (s, g), n in frame.groupby(["split", "group"]).size().items()]
    else:
        counts = [["set_aside", r, int(n)]
                  for r, n in frame[bad].groupby("set_aside_reason").size().items()]
    hist = np.histogram(valid["support_rate"].to_numpy(np.float64), bins=10, range=(0.0, 1.0))[0]
    comparisons = valid.groupby("split")["first_of_comparison"].sum()
    stats = {"counts": counts, "hist": hist.tolist(),
             "comparisons": {s: int(n) for s, n in comparisons.items()},
             "few_raters": int(valid["few_raters"].sum())}
    out["stats"] = ""
    row = pd.DataFrame([{"user_id": "", **{c: 0 for c in USER_SUMS}, "stats": json.dumps(stats)}])
    out = pd.concat([out, row], ignore_index=True).astype({"user_id": str})
    return pa.Table.from_pandas(out, preserve_index=False)


def _partials_of(table: pa.Table) -> pa.Table:
    """:func:`_partials` of the columns it needs (the texts stay in arrow)."""
    columns = _PARTIAL_COLUMNS + (["group"] if "group" in table.column_names else [])
    return _partials(table.select(columns))


def _collect(partials: list, path: str = "the input") -> tuple[pd.DataFrame, list]:
    """Users (indexed by id, with ``user_support``) and the blocks' stats from the partials."""
    if not partials:  # no write task wrote a row
        raise DataValidationError(f"{path}: no rows to prepare (the input is empty)")
    partials = pa.concat_tables(partials).to_pandas()
    is_stats = partials["user_id"] == ""
    blocks = [json.loads(text) for text in partials.loc[is_stats, "stats"]]
    users = partials[~is_stats].groupby("user_id")[USER_SUMS].sum()
    users["user_support"] = np.where(users["train_rows"] > 0,
                                     users["train_support"] / users["train_rows"].clip(lower=1),
                                     np.nan)
    return users, blocks


def _write(ds, uri: str, blocks: int, partition_cols=None) -> list:
    """Write ``ds`` as parquet at ``uri``; the partials of every written block. The write
    runs in the tasks of the map before it (same task cap: Ray Data fuses them), so the
    labelled rows never go through the object store."""
    from pafo_ray.data.sink import SummarisingParquetSink

    sink = SummarisingParquetSink(uri, partition_cols=partition_cols, summarise=_partials_of)
    ds.write_datasink(sink, concurrency=_tasks(blocks))
    return sink.returns or []


def _cores() -> int:
    from pafo_ray.ray_session import data_parallelism

    return data_parallelism()


def _map(ds, fn, blocks: int, **kwargs):
    """``map_batches`` with at most one task per core at a time (and per input block): a local
    Ray advertises more logical CPUs than cores (for concurrent trainers), and 8 tasks each
    holding a 262k-row block on 2 cores spent 4x their CPU time waiting."""
    import ray.data

    return ds.map_batches(fn, batch_format="pyarrow",
                          compute=ray.data.TaskPoolStrategy(size=_tasks(blocks)), **kwargs)


def _cpus_per_task() -> int:
    """Logical CPUs a count task asks for, so that at most one runs per core: a local Ray
    advertises more CPUs than cores (for concurrent trainers); a cluster: 1."""
    from pafo_ray.ray_session import cluster_cpus

    return max(1, cluster_cpus() // _cores())


def _tasks(blocks: int) -> int:
    return max(1, min(_cores(), blocks))


def run(ctx: StageContext) -> dict:
    import ray

    from pafo_ray.data.sources import plan_chunks

    cfg, run_dir = ctx.cfg, ctx.run_dir
    prep = cfg.prepare
    _check(prep)
    names = group_names(prep.num_groups)
    source = run_dir.input_source(ctx.cfg)
    chunks = plan_chunks(source.source, source.path, cfg.data.hf_split)
    partitions = prep.num_partitions or _partitions(chunks, prep.rows_per_partition)

    validate = dict(strict=prep.strict, split_seed=cfg.run.seed, val_fraction=prep.val_fraction,
                    test_fraction=prep.test_fraction, formats=formats_of(cfg))
    user_level = prep.group_level == "user"
    chunks_ds = ray.data.from_items(chunks, override_num_blocks=max(1, len(chunks)))
    label = dict(level=prep.group_level, tau=prep.tau, names=names)
    try:
        votes = _map(chunks_ds, _read_votes, len(chunks), batch_size=1,
                     fn_kwargs=dict(validate, partitions=partitions)).to_arrow_refs()
        # the shuffle: one task per partition takes its slice of every block (zero-copy)
        count = ray.remote(_count).options(name="prepare.count_votes", num_cpus=_cpus_per_task())
        vote_refs = [count.remote(p, *votes, prior_a=prep.prior_a, prior_b=prep.prior_b,
                                  min_raters=prep.min_raters, with_users=user_level,
                                  few_raters_policy=prep.few_raters_policy)
                     for p in range(partitions)]
        ray.wait(vote_refs, num_returns=len(vote_refs), fetch_local=False)
        del votes  # the counts stay in the object store, sorted by row_id
        if user_level:
            groups = _user_groups(vote_refs, prep, names)
            label["users_ref"] = ray.put(groups)
        rows = _map(chunks_ds, _read_label, len(chunks), batch_size=1,
                    fn_kwargs=dict(votes=vote_refs, validate=validate, label=label))
        users, blocks = _collect(_write(rows, run_dir.prepared_rows(), len(chunks),
                                        ["split", "group"]), redact_uri(source.path))
        del vote_refs
    except Exception as exc:  # surface our own validation errors without Ray's wrapping
        raise _unwrap(exc) from None
    users["group"] = groups["group"].reindex(users.index) if user_level else None
    users_out = users.reset_index()
    run_dir.write_users(NAME, users_out)
    summary = _summarise(blocks, users, prep, names)
    summary["partitions"] = partitions
    summary["input_files"] = len({c["path"] for c in chunks})
    return summary


def _user_groups(vote_refs: list, prep, names) -> pd.DataFrame:
    """User-level groups from the counted votes: each user's mean training support, cut at
    ``prepare.user_quantile``. Each block's per-user sums come from a Ray Data task; users,
    not rows, come to the driver."""
    import ray

    if not vote_refs:
        return pd.DataFrame({"user_support": [], "group": []})
    sums = _map(ray.data.from_arrow_refs(vote_refs), support_lib.user_training_support,
                len(vote_refs), batch_size=None, zero_copy_batch=True)
    users = support_lib.add_user_sums(ray.get(sums.to_arrow_refs()))
    rows = users.column("train_rows").to_numpy()
    support = np.where(rows > 0, users.column("train_support").to_numpy() / np.maximum(rows, 1), np.nan)
    if not len(support):
        return pd.DataFrame({"user_support": [], "group": []})
    cuts = support_lib.user_cut_points(support, prep.user_quantile)
    return pd.DataFrame({"user_support": support,
                         "group": support_lib.user_groups(support, cuts, names)},
                        index=pd.Index(users.column("user_id").to_numpy(zero_copy_only=False),
                                       name="user_id"))


def _partitions(chunks: list, rows_per_partition: int) -> int:
    """The cores, or more when the input is large: the last map of the shuffle then runs as
    many smaller tasks that start while aggregators finish other partitions."""
    rows = sum(c.get("num_rows", 0) for c in chunks)  # known for parquet and hf chunks
    if rows_per_partition < 1:
        raise ValueError(f"prepare.rows_per_partition must be >= 1, got {rows_per_partition}")
    return max(_cores(), -(-rows // rows_per_partition))


def _summarise(blocks: list, users: pd.DataFrame, prep, names) -> dict:
    counts: dict = {}
    for block in blocks:
        for split, group, value in block["counts"]:
            counts[(split, group)] = counts.get((split, group), 0) + value
    if prep.group_level == "user":  # a kept row's group is its user's
        for group in names:
            of_group = users[users["group"] == group]
            for split in SPLITS:
                if int(of_group[f"rows_{split}"].sum()):
                    counts[(split, group)] = int(of_group[f"rows_{split}"].sum())
    comparisons: dict = {}
    for block in blocks:
        for key, value in block["comparisons"].items():
            comparisons[key] = comparisons.get(key, 0) + int(value)
    by_split: dict = {}
    set_aside: dict = {}
    for (split, group), value in counts.items():
        if split == "set_aside":
            set_aside[group] = set_aside.get(group, 0) + value
        else:
            by_split.setdefault(split, {})[group] = value
    hist = np.sum(np.stack([np.asarray(b["hist"]) for b in blocks]), axis=0).tolist()
    summary = {
        "rows": int(sum(counts.values())),
        "rows_kept": int(sum(sum(g.values()) for g in by_split.values())),
        "set_aside": set_aside, "rows_set_aside": int(sum(set_aside.values())),
        "groups": by_split, "group_names": names, "group_level": prep.group_level,
        "comparisons": comparisons,
        "few_rater_rows": int(sum(b["few_raters"] for b in blocks)), "few_raters_policy": prep.few_raters_policy,
        "support_histogram": {"edges": np.linspace(0, 1, 11).round(2).tolist(), "counts": hist},
        "users": int(len(users)),
        "users_with_one_training_row": int((users["train_rows"] == 1).sum()),
        "users_without_training_rows": int((users["train_rows"] == 0).sum()),
    }
    if prep.group_level == "user":
        summary["users_by_group"] = {str(k): int(v) for k, v in users["group"].value_counts().items()}
    return summary


def _check(prep) -> None:
    cuts = prep.tau if prep.group_level == "row" else prep.user_quantile
    name = "prepare.tau" if prep.group_level == "row" else "prepare.user_quantile"
    if len(cuts) != prep.num_groups - 1 or list(cuts) != sorted(cuts):
        raise ValueError(f"{name} must hold num_groups-1 = {prep.num_groups - 1} ascending "
                         f"values, got {cuts}")


def _unwrap(exc: BaseException) -> BaseException:
    """Ray wraps a task's exception (RayTaskError, UserCodeException): find ours inside."""
    seen, visited = exc, set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, DataValidationError):
            return DataValidationError(str(seen.args[0]) if seen.args else str(seen))
        seen = getattr(seen, "cause", None) or seen.__cause__ or seen.__context__
    marker = "DataValidationError: "
    for line in str(exc).splitlines():
        if marker in line:
            return DataValidationError(line.split(marker, 1)[1].strip())
    return exc


def describe(summary: dict) -> str:
    groups = ", ".join(f"{s}: " + "/".join(f"{g} {n:,}" for g, n in sorted(gs.items()))
                       for s, gs in sorted(summary["groups"].items()))
    return (f"{summary['rows']:,} rows, {summary['users']:,} users, {groups}; "
            f"set aside {summary['rows_set_aside']:,} {summary['set_aside'] or ''}")
