"""Stage ``embed`` (frozen mode): every distinct (prompt, response) text embedded once.

Ray Data: prepared rows -> two texts per row -> hash-partition by ``text_id`` and drop
repeats -> ``map_batches`` with an actor pool of the backbone (CPU or ``num_gpus``)
-> ``embed/cache/*.parquet`` (``text_id``, ``embedding``). Teachers, baselines, the student
and every Tune trial then train on this cache.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pafo_ray.stages.base import StageContext

NAME = "embed"
SECTIONS = ("model",)
# Only what changes the vectors: heads and regularisation reuse the same cache.
EMBED_FIELDS = ("backbone", "mode", "pooling", "max_length", "template")


def hash_payload(cfg) -> str:
    import hashlib
    import json

    fields = {f: getattr(cfg.model, f) for f in EMBED_FIELDS}
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
    """An actor of the pool: one backbone, many batches."""

    def __init__(self, backbone: str, pooling: str, max_length: int, template: str, device: str):
        import torch

        from pafo_ray.models.backbone import TextEncoder

        if device == "cpu":
            torch.set_num_threads(1)  # one core per actor; the pool size sets parallelism
        self.encoder = TextEncoder(backbone, pooling=pooling, max_length=max_length,
                                   template=template).to(device).eval()
        self.batch = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        before = self.encoder.truncated_count
        vectors = self.encoder.embed(batch.column("prompt").to_pylist(),
                                     batch.column("response").to_pylist(),
                                     batch_size=max(1, batch.num_rows))
        cut = self.encoder.truncated_count - before
        flat = pa.array(vectors.astype(np.float32).reshape(-1))
        embedding = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        truncated = np.zeros(batch.num_rows, dtype=bool)
        truncated[:cut] = True  # a count per batch; which texts were cut does not matter here
        return pa.table({"text_id": batch.column("text_id"), "embedding": embedding,
                         "truncated": truncated})


def run(ctx: StageContext) -> dict:
    import ray
    import ray.data

    from pafo_ray.admission import pool_size
    from pafo_ray.models.backbone import resolve_backbone
    from pafo_ray.ray_session import data_parallelism
    from pafo_ray.sizing import cluster_capacity

    cfg, run_dir = ctx.cfg, ctx.run_dir
    resolve_backbone(cfg.model.backbone)  # fail fast, on the driver, with the clear message
    e = cfg.embed
    # Never let the pool take every CPU: Ray Data then has no slot left to feed it (a known hang).
    actors = pool_size(e.num_actors, e.cpus_per_actor, e.num_gpus_per_actor,
                       cluster_capacity(cfg.run.ray))
    ds = ray.data.read_parquet(run_dir.prepared_rows()).select_columns(
        ["prompt", "chosen", "rejected", "chosen_text_id", "rejected_text_id", "split"])
    texts = (ds.map_batches(texts_of, batch_format="pyarrow", batch_size=None)
             .repartition(max(1, min(data_parallelism(), 8)), keys=["text_id"])
             .map_batches(_distinct, batch_format="pyarrow", batch_size=None)
             # A hash partition is one block of every text it holds; handed to an actor whole
             # it held ~5 GiB there at 1M rows and was killed for memory at 5M. Blocks of a
             # few batches keep the actors' memory flat whatever the data size.
             .repartition(target_num_rows_per_block=max(4096, 64 * e.batch_size)))
    device = "cuda" if e.num_gpus_per_actor > 0 else "cpu"
    embedded = texts.map_batches(
        Embedder, batch_format="pyarrow", batch_size=e.batch_size,
        fn_constructor_kwargs=dict(backbone=cfg.model.backbone, pooling=cfg.model.pooling,
                                   max_length=cfg.model.max_length, template=cfg.model.template,
                                   device=device),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_gpus=e.num_gpus_per_actor or None, num_cpus=e.cpus_per_actor)
    cache_uri = run_dir.embed_cache()
    embedded.write_parquet(cache_uri)
    stats = ray.data.read_parquet(cache_uri).select_columns(["text_id", "truncated"])
    texts_count = stats.count()
    truncated = int(stats.sum("truncated") or 0) if texts_count else 0
    first = ray.data.read_parquet(cache_uri).select_columns(["embedding"]).take(1)
    dim = int(len(first[0]["embedding"])) if first else 0
    return {"texts": int(texts_count), "dim": dim, "truncated_texts": truncated,
            "backbone": cfg.model.backbone, "actors": actors, "max_length": cfg.model.max_length}


def describe(summary: dict) -> str:
    return (f"{summary['texts']:,} distinct texts embedded ({summary['dim']}-d, "
            f"{summary['backbone']}, {summary['truncated_texts']:,} cut at "
            f"{summary['max_length']} tokens, {summary['actors']} actor(s))")
