"""Stage ``embed`` (frozen mode): every distinct (prompt, response) text embedded once.

Ray Data: prepared rows -> two texts per row -> hash-partition by ``text_id`` and drop
repeats -> ``map_batches`` with an actor pool of the backbone (CPU or ``num_gpus``)
-> ``embed/cache/*.parquet`` (``text_id``, ``embedding``). Teachers, baselines, the student
and every Tune trial then train on this cache.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pyarrow as pa

from pafo_ray.stages.base import StageContext

NAME = "embed"
TEXT_COLUMNS = ["prompt", "chosen", "rejected", "chosen_text_id", "rejected_text_id", "split"]
SECTIONS = ("model",)
# Only what changes the vectors: heads and regularisation reuse the same cache.
EMBED_FIELDS = ("backbone", "mode", "pooling", "max_length", "template", "pooling_layers",
                "layer_combine")
ADAPT_FIELDS = ("adapt", "adapt_dim", "adapt_epochs", "adapt_lr", "adapt_weight_decay",
                "adapt_holdout")
TUNE_FIELDS = ("tune_layers", "tune_epochs", "tune_lr", "tune_prompts_per_step", "tune_max_texts",
               "adapt_holdout")


def hash_payload(cfg) -> str:
    import hashlib
    import json

    fields = {f: getattr(cfg.model, f) for f in EMBED_FIELDS}
    if cfg.embed.adapt != "none":  # the adapter's own settings change the cached vectors too
        fields.update({f"embed.{f}": getattr(cfg.embed, f) for f in ADAPT_FIELDS})
        fields["model.rank"] = cfg.model.rank
    if cfg.embed.tune_layers:  # so do the tuned layers' (rank, shrinkage: the head they fit under)
        fields.update({f"embed.{f}": getattr(cfg.embed, f) for f in TUNE_FIELDS})
        fields.update({"model.rank": cfg.model.rank, "model.user_shrinkage": cfg.model.user_shrinkage})
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def texts_of(batch: pa.Table) -> pa.Table:
    """Each (prompt, response) text of the kept rows once: ``text_id``, ``prompt``, ``response``."""
    split = batch.column("split").to_numpy(zero_copy_only=False)
    keep = split != "set_aside"
    prompts = batch.column("prompt").to_numpy(zero_copy_only=False)[keep]
    ids = np.concatenate([batch.column("chosen_text_id").to_numpy()[keep],
                          batch.column("rejected_text_id").to_numpy()[keep]])
    responses = np.concatenate([batch.column("chosen").to_numpy(zero_copy_only=False)[keep],
                                batch.column("rejected").to_numpy(zero_copy_only=False)[keep]])
    table = pa.table({"text_id": ids, "prompt": np.concatenate([prompts, prompts]),
                      "response": responses})
    _, first = np.unique(ids, return_index=True)
    return table.take(pa.array(np.sort(first)))


def _distinct(batch: pa.Table) -> pa.Table:
    _, first = np.unique(batch.column("text_id").to_numpy(), return_index=True)
    return batch.take(pa.array(np.sort(first)))


class Embedder:
    """An actor of the pool: one backbone, many blocks of texts.

    Its torch threads are its CPUs (at most its machine's cores). Each Ray Data batch (about
    a block) is tokenized in one call, sorted by token length, cut into forward batches of
    ``batch_size`` texts and put back in its order: a batch pads only to its own longest text.
    """

    def __init__(self, backbone: str, pooling: str, max_length: int, template: str, device: str,
                 pooling_layers: tuple = (), layer_combine: str = "mean", cpus: float = 1.0,
                 batch_size: int = 64):
        import torch

        from pafo_ray.admission import actor_threads
        from pafo_ray.models.backbone import TextEncoder

        if device == "cpu":
            torch.set_num_threads(actor_threads(cpus))
        self.threads = torch.get_num_threads()
        self.batch_size = batch_size
        self.encoder = TextEncoder(backbone, pooling=pooling, max_length=max_length,
                                   template=template, pooling_layers=pooling_layers,
                                   layer_combine=layer_combine).to(device).eval()

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids, truncated = self.encoder.token_ids(batch.column("prompt").to_pylist(),
                                                batch.column("response").to_pylist())
        vectors = self.encoder.embed_ids(ids, batch_size=self.batch_size, by_length=True)
        flat = pa.array(vectors.reshape(-1))
        embedding = pa.FixedSizeListArray.from_arrays(flat, self.encoder.hidden_size)
        return pa.table({"text_id": batch.column("text_id"), "embedding": embedding,
                         "truncated": pa.array(truncated, type=pa.bool_())})


def block_rows(cfg) -> int:
    """Texts per block, and per Ray Data batch an actor sorts by length at once."""
    return max(4096, 64 * cfg.embed.batch_size)


def embed_pool(cfg, capacity) -> dict:
    """The actor pool from the config and the cluster: ``actors``, ``cpus`` (per actor)."""
    from pafo_ray.admission import actor_cpus
    from pafo_ray.sizing import embed_pool_size

    e = cfg.embed
    cpus = actor_cpus(e.cpus_per_actor, e.num_gpus_per_actor, capacity)
    return {"actors": embed_pool_size(e, cpus, capacity), "cpus": cpus}


def embed_texts(texts, cfg, pool: dict):
    """Ray Data: ``texts`` (``text_id``, ``prompt``, ``response``) -> (``text_id``,
    ``embedding``, ``truncated``) through an actor pool of ``pool`` (:func:`embed_pool`)."""
    import ray.data

    e, m = cfg.embed, cfg.model
    device = "cuda" if e.num_gpus_per_actor > 0 else "cpu"
    return texts.map_batches(
        Embedder, batch_format="pyarrow", batch_size=block_rows(cfg),
        fn_constructor_kwargs=dict(backbone=m.backbone, pooling=m.pooling,
                                   max_length=m.max_length, template=m.template, device=device,
                                   pooling_layers=tuple(m.pooling_layers),
                                   layer_combine=m.layer_combine, cpus=pool["cpus"],
                                   batch_size=e.batch_size),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool["actors"]),
        num_gpus=e.num_gpus_per_actor or None, num_cpus=pool["cpus"])


def run(ctx: StageContext) -> dict:
    from pafo_ray.models.backbone import resolve_backbone
    from pafo_ray.sizing import cluster_capacity

    cfg = ctx.cfg
    resolve_backbone(cfg.model.backbone)  # fail fast, on the driver, with the clear message
    e = cfg.embed
    # Never let the pool take every CPU: Ray Data then has no slot left to feed it (a known hang).
    capacity = cluster_capacity(cfg.run.ray)
    tuned = tune_backbone(ctx) if e.tune_layers else None
    if tuned is not None:  # every text below goes through the tuned backbone; the runner
        # applies config_updates to the run's own context after the stage
        ctx = dataclasses.replace(ctx, cfg=_with_backbone(cfg, tuned["backbone_dir"]))
    summary = _embed(ctx, capacity, tuned)
    if tuned is not None:
        summary["tune"] = tuned
        summary["config_updates"] = {"model": {"backbone": tuned["backbone_dir"]}}
    return summary


def _embed(ctx: StageContext, capacity, tuned) -> dict:
    import ray
    import ray.data

    cfg, run_dir, e = ctx.cfg, ctx.run_dir, ctx.cfg.embed
    pool = embed_pool(cfg, capacity)
    adapt = e.adapt != "none"
    # With an adapter the backbone's vectors go to frozen_cache and the adapted ones to cache.
    cache_uri = run_dir.embed_frozen_cache() if adapt else run_dir.embed_cache()
    nodes = len(capacity_nodes())
    # A tuned backbone lives in this machine's run folder: other nodes' actors cannot load it.
    inline = embeds_inline(cfg, run_dir.prepare_summary(), nodes) or (tuned is not None
                                                                       and nodes > 1)
    began = time.time()
    if inline:
        texts_count, truncated, dim = embed_here(ctx, cache_uri)
        pool = {"actors": 0, "cpus": 0}
    else:
        _embed_with_pool(ctx, pool, cache_uri)
        stats = ray.data.read_parquet(cache_uri).select_columns(["text_id", "truncated"])
        texts_count = stats.count()
        truncated = int(stats.sum("truncated") or 0) if texts_count else 0
        first = ray.data.read_parquet(cache_uri).select_columns(["embedding"]).take(1)
        dim = int(len(first[0]["embedding"])) if first else 0
    encode_seconds = round(time.time() - began, 2)
    adapted = adapt_cache(ctx, cache_uri, run_dir.embed_cache()) if adapt else None
    summary = {"texts": int(texts_count), "dim": dim, "truncated_texts": truncated,
               "backbone": cfg.model.backbone, "actors": pool["actors"],
               "cpus_per_actor": pool["cpus"], "max_length": cfg.model.max_length,
               "pooling_layers": list(cfg.model.pooling_layers),
               "layer_combine": cfg.model.layer_combine, "encode_seconds": encode_seconds,
               "where": "driver" if inline else "actor pool"}
    if adapted is not None:
        summary["adapt"] = adapted
        summary["dim"] = adapted["dim"]
    return summary


def _with_backbone(cfg, backbone: str):
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone=backbone))


def tune_backbone(ctx: StageContext) -> dict:
    """``embed.tune_layers``: fit the backbone's top layers on prepare's **training** rows
    (:mod:`pafo_ray.models.toplayers`) and save it to ``<run>/embed/backbone``."""
    import pandas as pd

    from pafo_ray.models.adapter import training_pairs
    from pafo_ray.models.backbone import TextEncoder
    from pafo_ray.models.toplayers import tune_top_layers
    from pafo_ray.redact import redact_uri
    from pafo_ray.train.inmemory import read_frame

    cfg, run_dir, e, m = ctx.cfg, ctx.run_dir, ctx.cfg.embed, ctx.cfg.model
    target = run_dir.local_path(run_dir.embed_backbone())
    if target is None:
        raise ValueError("embed.tune_layers needs a local run.storage_path (the tuned backbone "
                         f"is loaded from the run folder); got {redact_uri(cfg.run.storage_path)}")
    # Only the train partition is read: validation and test labels never reach the tuned layers.
    rows = read_frame(run_dir.prepared_rows("train"), ["user_id", *TEXT_COLUMNS[:-1]])
    rows["split"] = "train"
    rows = _whole_prompts(rows, e.tune_max_texts, cfg.run.seed)
    texts = texts_of(pa.Table.from_pandas(rows[TEXT_COLUMNS], preserve_index=False))
    texts = texts.take(pa.compute.sort_indices(texts, [("text_id", "ascending")]))
    encoder = TextEncoder(m.backbone, pooling=m.pooling, max_length=m.max_length,
                          template=m.template, pooling_layers=m.pooling_layers,
                          layer_combine=m.layer_combine)
    ids, _ = encoder.token_ids(texts.column("prompt").to_pylist(),
                               texts.column("response").to_pylist())
    pairs = training_pairs(rows, texts.column("text_id").to_numpy(), run_dir.user_ids())
    result = tune_top_layers(encoder, ids, pairs, len(run_dir.user_ids()), layers=e.tune_layers,
                             epochs=e.tune_epochs, lr=e.tune_lr, rank=m.rank,
                             user_shrinkage=m.user_shrinkage, holdout_fraction=e.adapt_holdout,
                             prompts_per_step=e.tune_prompts_per_step, seed=cfg.run.seed)
    encoder.model.save_pretrained(target)
    encoder.tokenizer.save_pretrained(target)
    kept = pd.unique(rows["prompt"]).size
    return {**dataclasses.asdict(result), "prompts": int(kept), "backbone_dir": target,
            "base_backbone": m.backbone}


def _whole_prompts(rows, max_texts: int, seed: int):
    """``rows`` of sampled whole prompts whose distinct texts number at most ``max_texts``."""
    ids = np.concatenate([rows["chosen_text_id"].to_numpy(), rows["rejected_text_id"].to_numpy()])
    if np.unique(ids).size <= max_texts:
        return rows
    import pandas as pd

    pairs = pd.DataFrame({"prompt": np.concatenate([rows["prompt"].to_numpy()] * 2), "text": ids})
    per_prompt = pairs.drop_duplicates().groupby("prompt").size()
    order = np.random.default_rng([seed, 20]).permutation(per_prompt.index.to_numpy())
    keep = order[np.cumsum(per_prompt.loc[order].to_numpy()) <= max_texts]
    return rows[rows["prompt"].isin(keep)].reset_index(drop=True)


def _embed_with_pool(ctx: StageContext, pool: dict, cache_uri: str) -> None:
    import ray.data

    from pafo_ray.ray_session import data_parallelism

    cfg, run_dir = ctx.cfg, ctx.run_dir
    ds = ray.data.read_parquet(run_dir.prepared_rows()).select_columns(TEXT_COLUMNS)
    texts = (ds.map_batches(texts_of, batch_format="pyarrow", batch_size=None)
             .repartition(max(1, min(data_parallelism(), 8)), keys=["text_id"])
             .map_batches(_distinct, batch_format="pyarrow", batch_size=None)
             # A hash partition is one block of every text it holds; handed to an actor whole
             # it held ~5 GiB there at 1M rows and was killed for memory at 5M. Blocks of a
             # few batches keep the actors' memory flat whatever the data size.
             .repartition(target_num_rows_per_block=block_rows(cfg))
             # Done before the pool starts: an actor pool holds its CPUs from the start of an
             # execution, and the hash shuffle's tasks want a whole CPU each beside its
             # aggregators. On a 2-CPU cluster pool + aggregators left 0.5 CPU and the shuffle
             # waited forever (cluster/local.yaml on `ray start --head --num-cpus 2`).
             .materialize())
    embed_texts(texts, cfg, pool).write_parquet(cache_uri)


def capacity_nodes() -> list:
    """The alive nodes of the connected Ray cluster."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def embeds_inline(cfg, prepared, nodes: int) -> bool:
    """Embed in the driver: a one-node cluster, on CPU, and at most ``embed.inline_texts``
    texts (two per kept row, counted before repeats are dropped, from prepare's summary)."""
    e = cfg.embed
    if nodes != 1 or e.num_gpus_per_actor > 0 or e.inline_texts <= 0:
        return False
    rows = sum(int(n) for split in prepared.rows_by_group.values() for n in split.values())
    return 2 * rows <= e.inline_texts


def embed_here(ctx: StageContext, cache_uri: str) -> tuple:
    """The actor's work in this process (:func:`embed_in_process`), one parquet file:
    ``(texts, truncated texts, dim)``."""
    import pyarrow.parquet as pq

    from pafo_ray.storage import split_uri
    from pafo_ray.train.inmemory import read_frame

    frame = read_frame(ctx.run_dir.prepared_rows(), TEXT_COLUMNS)
    texts = texts_of(pa.Table.from_pandas(frame, preserve_index=False))
    table, dim = embed_in_process(ctx.cfg, texts)
    fs, path = split_uri(cache_uri)
    fs.create_dir(path, recursive=True)
    pq.write_table(table, f"{path}/part-00000.parquet", filesystem=fs)
    truncated = int(pa.compute.sum(table.column("truncated")).as_py() or 0)
    return table.num_rows, truncated, dim


def embed_in_process(cfg, texts: pa.Table) -> tuple:
    """``texts`` (``text_id``, ``prompt``, ``response``) embedded in this process by the pool's
    :class:`Embedder` (so the same vectors), on all cores, in the pool's blocks:
    ``(table of text_id, embedding, truncated; dim)``. The model load is included."""
    import os

    import torch

    threads = torch.get_num_threads()
    try:  # the Embedder sets this process's torch threads: put them back after
        m = cfg.model
        embedder = Embedder(backbone=m.backbone, pooling=m.pooling, max_length=m.max_length,
                            template=m.template, device="cpu",
                            pooling_layers=tuple(m.pooling_layers),
                            layer_combine=m.layer_combine, cpus=float(os.cpu_count() or 1),
                            batch_size=cfg.embed.batch_size)
        size = block_rows(cfg)
        parts = [embedder(texts.slice(i, size)) for i in range(0, texts.num_rows, size)]
        table = pa.concat_tables(parts) if parts else embedder(texts)
    finally:
        torch.set_num_threads(threads)
    return table, embedder.encoder.hidden_size


def adapt_cache(ctx: StageContext, frozen_uri: str, out_uri: str) -> dict:
    """Fit the feature adapter on prepare's **training** rows over the frozen cache and write
    the adapted vectors (same ``text_id``s) to ``out_uri``. See :mod:`pafo_ray.models.adapter`."""
    import pyarrow.parquet as pq

    from pafo_ray.models.adapter import fit_adapter, training_pairs
    from pafo_ray.storage import split_uri
    from pafo_ray.train.arrays import read_cache
    from pafo_ray.train.inmemory import read_frame

    cfg, run_dir, e = ctx.cfg, ctx.run_dir, ctx.cfg.embed
    cache = read_cache(frozen_uri)
    # Only the train partition is read: validation and test labels never reach the adapter.
    rows = read_frame(run_dir.prepared_rows("train"),
                      ["user_id", "prompt", "chosen_text_id", "rejected_text_id"])
    rows["split"] = "train"
    users = run_dir.user_ids()
    pairs = training_pairs(rows, cache.text_ids, users)
    result = fit_adapter(cache.vectors.numpy(), pairs, len(users), dim=e.adapt_dim,
                         rank=cfg.model.rank, epochs=e.adapt_epochs, lr=e.adapt_lr,
                         weight_decay=e.adapt_weight_decay, user_shrinkage=cfg.model.user_shrinkage,
                         holdout_fraction=e.adapt_holdout, seed=cfg.run.seed)
    flat = pa.array(result.features.reshape(-1))
    table = pa.table({"text_id": pa.array(cache.text_ids),
                      "embedding": pa.FixedSizeListArray.from_arrays(flat, result.features.shape[1])})
    fs, path = split_uri(out_uri)
    fs.create_dir(path, recursive=True)
    pq.write_table(table, f"{path}/adapted.parquet", filesystem=fs)
    return {"method": e.adapt, "dim": int(result.features.shape[1]), "epoch": result.epoch,
            "train_rows": result.train_rows, "seconds": result.seconds,
            "holdout_accuracy": result.holdout_accuracy,
            "frozen_holdout_accuracy": result.frozen_holdout_accuracy,
            "frozen_dim": int(cache.vectors.shape[1])}


def describe(summary: dict) -> str:
    adapt = summary.get("adapt")
    extra = (f"; adapted to {adapt['dim']}-d on {adapt['train_rows']:,} training rows in "
             f"{adapt['seconds']:.0f} s (held-out BT accuracy {adapt['holdout_accuracy']:.3f} vs "
             f"{adapt['frozen_holdout_accuracy']:.3f} frozen)" if adapt else "")
    tune = summary.get("tune")
    if tune:
        extra += (f"; top {tune['layers']} layer(s) tuned on {tune['train_rows']:,} training rows "
                  f"in {tune['seconds']:.0f} s, epoch {tune['epoch']} kept (held-out BT accuracy "
                  f"{tune['holdout_accuracy']:.3f} vs {tune['frozen_holdout_accuracy']:.3f} untuned)")
    where = ("in the driver" if summary.get("where") == "driver" else
             f"{summary['actors']} actor(s) of {summary.get('cpus_per_actor', 1):g} CPU")
    return (f"{summary['texts']:,} distinct texts embedded ({summary['dim']}-d, "
            f"{summary['backbone']}, {summary['truncated_texts']:,} cut at "
            f"{summary['max_length']} tokens, {where}){extra}")
