"""Stage ``input``: make the rows ``prepare`` reads.

Files the user points to (parquet, jsonl, Hugging Face) are read in place: this stage
only records them. The built-in generator and the DSP / PersonalLLM converters write
their rows as parquet under ``<run>/input/rows/``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from pafo_ray.stages.base import StageContext

NAME = "input"
SECTIONS = ("data",)


def hash_payload(cfg) -> str:
    """The data section plus a fingerprint of the files at ``data.path`` (path, size, mtime):
    rewritten input reruns this stage and, through the chained hashes, all that follows."""
    from pafo_ray.data.fingerprint import fingerprint
    from pafo_ray.redact import redact_uri

    path = cfg.data.path if cfg.data.source != "builtin" else None
    try:
        files = fingerprint(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"data.path {redact_uri(str(path))}: cannot list the input files: "
                         f"{exc}") from None
    blob = f"{cfg.section_hash(*SECTIONS)}|{files['digest']}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run(ctx: StageContext) -> dict:
    from pafo_ray.data.fingerprint import fingerprint

    data = ctx.cfg.data
    if data.source in ("parquet", "jsonl", "hf"):
        if not data.path:
            raise ValueError(f"data.source={data.source} needs data.path")
        return {"source": data.source, "path": data.path, "generated": False,
                "fingerprint": fingerprint(data.path)}
    with tempfile.TemporaryDirectory() as tmp:
        target = ctx.run_dir.input_rows()
        local = ctx.run_dir.local_path(target) or os.path.join(tmp, "rows")
        os.makedirs(local, exist_ok=True)
        rows = _write_rows(ctx, local)
        ctx.run_dir.save_folder(local, target)
    return {"source": "parquet", "path": target, "generated": True,
            "generator": data.source, "rows": rows}


def _write_rows(ctx: StageContext, local: str) -> int:
    import pyarrow.parquet as pq

    data = ctx.cfg.data
    if data.source == "builtin":
        from pafo_ray.data.generate import write_generated

        files = write_generated(data.generator, local)
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    from pafo_ray.data import convert

    if not data.path:
        raise ValueError(f"data.source={data.source} needs data.path (the {data.source} file)")
    kwargs = dict(num_users=data.sim_num_users, minority_fraction=data.sim_minority_fraction,
                  raters_train=data.sim_raters_train, raters_eval=data.sim_raters_eval,
                  label_beta=data.sim_label_beta, max_prompts=data.sim_max_prompts,
                  seed=ctx.cfg.run.seed)
    if data.source == "dsp":
        table = convert.dsp_to_table(data.path, **kwargs)
    else:
        table = convert.personalllm_to_table(data.path, **kwargs)
    pq.write_table(table, os.path.join(local, "part-00000.parquet"))
    return table.num_rows


def describe(summary: dict) -> str:
    if summary.get("generated"):
        return f"{summary['rows']:,} rows from {summary['generator']}"
    return f"reading {summary['source']} at {summary['path']}"
