"""The run directory's layout: where every artifact lives, and typed readers of what stages wrote.

This is the one module that spells a stage's folder or a file in it (DESIGN §9). Stages,
``train/``, ``scoring.py`` and ``tuning/`` ask a :class:`RunLayout` — a
:class:`pafo_ray.storage.RunDir` (generic file I/O, completion markers) with named paths —
instead of joining strings, and read other stages' ``summary.json`` through the typed readers
below instead of by string keys. Every path method returns a full URI (or absolute local path)::

    <storage_path>/<run_name>/...                   paths                       typed readers
    <stage>/summary.json, <stage>/_SUCCESS.json     stage_dir(stage)            summary(stage) (the runner)
    input/rows/*.parquet  (generated rows)          input_rows()                input_source(cfg)
    prepare/data/split=<s>/group=<g>/*.parquet      prepared_rows(split),       prepare_summary()
                                                    prepared_splits(splits)
    prepare/users.parquet                           -                           users(PREPARE), user_ids()
    embed/cache/*.parquet  (text_id, embedding)     embed_cache()
    embed/frozen_cache/  (backbone vectors, adapt)  embed_frozen_cache()
    embed/backbone/  (tuned, embed.tune_layers)     embed_backbone()
    groups/data/split=<s>/group=<g>/*.parquet       grouped_rows(split, gs),    groups_summary()
                                                    grouped_data()
    groups/users.parquet                            -                           users()
    teachers/<group>[_ft]/, teachers/vanilla/       teacher_model(name)         teachers_summary(),
      (saved models; margin_stats.json in each)                                 teacher_margin_stats(name)
    margins/rows/split={train,val,extra}/           margin_rows(split),
                                                    margin_data()
    margins/teacher_stats.json                      -                           teacher_stats()
    baselines/<method>/                             baseline_model(method)      baselines_jobs()
    tune/trials.*, front.csv, pareto_front.png ...  tune_file(name)             tune_summary()
    tune/baselines/<method>/                        tuned_baseline_model(m)
    distill/student/, distill/student_default/      student_model(name)         distill_summary()
    evaluate/report.md, metrics.json, *.png         evaluate_dir(), report()
    _ray/<stage>/  (Ray Train and Tune experiments) ray_storage(stage),
                                                    fail_marker(stage, job, h)

Writers: ``write_summary``, ``write_users(stage, frame)``, ``write_teacher_stats``,
``write_file(uri, bytes)``; folders: ``save_folder(local, uri)``, ``fetch_folder(uri, local)``,
``local_path(uri)``. A model folder holds a saved :class:`~pafo_ray.models.RewardModel` (``config.json`` + weights).
``_ray/`` lives outside the stage folders, which the runner clears, so a rerun after a kill
restores the Ray experiments instead of redoing them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from pafo_ray.storage import RunDir, download_dir, upload_dir

# Stage folders (each stage writes only under its own; names equal the stage registry's).
INPUT, PREPARE, EMBED, REGULARIZE, GROUPS = "input", "prepare", "embed", "regularize", "groups"
TEACHERS, MARGINS, BASELINES, TUNE = "teachers", "margins", "baselines", "tune"
DISTILL, EVALUATE = "distill", "evaluate"
STAGE_FOLDERS = (INPUT, PREPARE, EMBED, REGULARIZE, GROUPS, TEACHERS, MARGINS, BASELINES, TUNE,
                 DISTILL, EVALUATE)
SCRATCH = "_ray"  # Ray Train / Tune storage, kept across reruns
SUMMARY = "summary.json"
USERS = "users.parquet"
MODEL_CONFIG = "config.json"  # present in every complete saved model folder


# Typed views of the summaries other stages read --------------------------------------------
@dataclass(frozen=True)
class InputSource:
    source: str  # parquet, jsonl or hf
    path: str


@dataclass(frozen=True)
class PrepareSummary:
    rows_by_group: dict   # {split: {group: rows}}
    rows_set_aside: int
    set_aside: dict       # {reason: rows}


@dataclass(frozen=True)
class GroupsSummary:
    rows_by_group: dict            # {split: {group: rows}} of the grouped rows
    how: str                       # how the groups were made, for the report
    users_moved: Optional[int]     # users moved from their support group (user level only)

    def row_counts(self, split: str) -> dict:
        """``{group: rows}`` of one split (groups without rows absent)."""
        return {g: int(n) for g, n in self.rows_by_group.get(split, {}).items()}


@dataclass(frozen=True)
class TeachersSummary:
    jobs: dict       # {model name: {"metrics", "model", "started", "finished"}}
    fallbacks: dict  # {group: why its teacher is the vanilla model}


@dataclass(frozen=True)
class TuneSummary:
    chosen: Optional[dict]    # the chosen trial ({"trial_id", "params", ...}) or None
    baseline_searches: dict   # {method: its own search's summary}
    plot: Optional[str]       # file name of the Pareto plot under tune/
    data: dict = field(repr=False)  # the whole summary (the report renders it)


@dataclass(frozen=True)
class DistillSummary:
    origin: str      # where the student's weights came from
    settings: dict   # the distill section it trained with


class RunLayout(RunDir):
    """The named paths of one run (``RunLayout.of(cfg)`` or ``RunLayout(storage, name)``)."""

    @classmethod
    def of(cls, cfg) -> "RunLayout":
        return cls(cfg.run.storage_path, cfg.run.run_name)

    # stage folders and summaries ---------------------------------------------------------
    def stage_dir(self, stage: str) -> str:
        return self.uri(stage)

    def summary(self, stage: str) -> dict:
        return self.read_json(stage, SUMMARY)

    def write_summary(self, stage: str, summary: dict) -> None:
        self.write_json(summary, stage, SUMMARY)

    def has_summary(self, stage: str) -> bool:
        return self.exists(stage, SUMMARY)

    # input, prepare, embed ---------------------------------------------------------------
    def input_rows(self) -> str:
        return self.uri(INPUT, "rows")

    def input_source(self, cfg) -> InputSource:
        """What ``prepare`` reads. The path is the real one — the run's generated rows, or
        ``data.path`` from the config — never the one in ``summary.json``, which is recorded
        without URI secrets."""
        summary = self.summary(INPUT)
        path = self.input_rows() if summary.get("generated") else cfg.data.path
        return InputSource(source=summary["source"], path=path)

    def prepared_rows(self, split: Optional[str] = None) -> str:
        """``prepare/data`` (every split, set-aside rows included) or one split of it."""
        return self.uri(PREPARE, "data", f"split={split}") if split else self.uri(PREPARE, "data")

    def prepared_splits(self, splits) -> list:
        """The folders of those ``splits`` that prepare wrote (a split may have no rows)."""
        return [self.prepared_rows(s) for s in splits
                if self.exists(PREPARE, "data", f"split={s}")]

    def prepare_summary(self) -> PrepareSummary:
        s = self.summary(PREPARE)
        return PrepareSummary(rows_by_group=s["groups"], rows_set_aside=int(s["rows_set_aside"]),
                              set_aside=s["set_aside"])

    def embed_cache(self) -> str:
        """The features every model trains on (the adapted ones when ``embed.adapt`` is on)."""
        return self.uri(EMBED, "cache")

    def embed_backbone(self) -> str:
        """The backbone with its top layers tuned (``embed.tune_layers``; a HF folder)."""
        return self.uri(EMBED, "backbone")

    def embed_frozen_cache(self) -> str:
        """The backbone's own vectors, kept beside the adapted ``cache`` (``embed.adapt``)."""
        return self.uri(EMBED, "frozen_cache")

    # users -------------------------------------------------------------------------------
    def write_users(self, stage: str, frame) -> None:
        """``<stage>/users.parquet`` (prepare's, then the groups stage's final groups)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
        self.write_bytes(sink.getvalue().to_pybytes(), stage, USERS)

    def users(self, stage: str = GROUPS, columns: Optional[list] = None):
        """The users table (``user_id`` as str) of ``prepare`` or ``groups`` (default)."""
        import pyarrow.parquet as pq

        with self.fs.open_input_file(self.fs_path(stage, USERS)) as fh:
            users = pq.read_table(fh, columns=columns).to_pandas()
        users["user_id"] = users["user_id"].astype(str)
        return users

    def user_ids(self) -> list:
        """Every user id, sorted: the order of a model's user table. From prepare's users, so
        models fitted before the groups stage (regularize, the grouping model) see the same."""
        return sorted(self.users(PREPARE, columns=["user_id"])["user_id"])

    # groups ------------------------------------------------------------------------------
    def grouped_rows(self, split: str, groups: Optional[list] = None) -> list:
        """Parquet folders of the grouped rows of a split (optionally only some groups): the
        groups stage's output, which every model stage reads."""
        if groups is None:
            return [self.uri(GROUPS, "data", f"split={split}")]
        return [self.uri(GROUPS, "data", f"split={split}", f"group={g}") for g in groups]

    def grouped_data(self) -> str:
        return self.uri(GROUPS, "data")

    def groups_summary(self) -> GroupsSummary:
        s = self.summary(GROUPS)
        return GroupsSummary(rows_by_group=s["groups"], how=s["how"],
                             users_moved=s.get("users_moved"))

    # teachers, margins -------------------------------------------------------------------
    def teacher_model(self, name: str) -> str:
        return self.uri(TEACHERS, name)

    def has_teacher(self, name: str) -> bool:
        return self.exists(TEACHERS, name, MODEL_CONFIG)

    def teacher_margin_stats(self, name: str) -> dict:
        """``{"mean", "std", "val_accuracy"}`` of a teacher's validation margins (saved with
        the model; ``val_accuracy`` None for a checkpoint written before it was recorded)."""
        path = (TEACHERS, name, "margin_stats.json")
        if not self.exists(*path):
            raise RuntimeError(f"teacher '{name}' lacks {'/'.join(path)}: "
                               "rerun `pafo-ray teachers --force`")
        stats = self.read_json(*path)
        accuracy = stats.get("val_accuracy")
        return {"mean": float(stats["val_margin_mean"]), "std": float(stats["val_margin_std"]),
                "val_accuracy": None if accuracy is None else float(accuracy)}

    def teachers_summary(self) -> TeachersSummary:
        s = self.summary(TEACHERS)
        return TeachersSummary(jobs=dict(s["jobs"]), fallbacks=s.get("fallbacks", {}))

    def margin_rows(self, split: str) -> str:
        return self.uri(MARGINS, "rows", f"split={split}")

    def margin_data(self) -> str:
        return self.uri(MARGINS, "rows")

    def has_margin_rows(self, split: str) -> bool:
        return self.exists(MARGINS, "rows", f"split={split}")

    def write_teacher_stats(self, stats: dict) -> None:
        self.write_json(stats, MARGINS, "teacher_stats.json")

    def teacher_stats(self) -> dict:
        """``{teacher: {"mean", "std"}}`` as the margins stage recorded them."""
        return self.read_json(MARGINS, "teacher_stats.json")

    # baselines, tune, distill, evaluate --------------------------------------------------
    def baseline_model(self, method: str) -> str:
        return self.uri(BASELINES, method)

    def baselines_jobs(self) -> Optional[dict]:
        """``{method: {"metrics", "model", ...}}``, or None when the stage wrote no summary."""
        return self.summary(BASELINES)["jobs"] if self.has_summary(BASELINES) else None

    def tune_file(self, name: str) -> str:
        return self.uri(TUNE, name)

    def tuned_baseline_model(self, method: str) -> str:
        return self.uri(TUNE, "baselines", method)

    def tune_summary(self) -> TuneSummary:
        s = self.summary(TUNE)
        return TuneSummary(chosen=s.get("chosen"), baseline_searches=s.get("baseline_searches") or {},
                           plot=s.get("plot"), data=s)

    def student_model(self, name: str = "student") -> str:
        """``distill/student`` (or ``student_default``: the default weights, for comparison)."""
        return self.uri(DISTILL, name)

    def has_student(self, name: str) -> bool:
        return self.exists(DISTILL, name, MODEL_CONFIG)

    def distill_summary(self) -> DistillSummary:
        s = self.summary(DISTILL)
        return DistillSummary(origin=s["origin"], settings=s["settings"])

    def evaluate_dir(self) -> str:
        return self.uri(EVALUATE)

    def report(self) -> str:
        return self.uri(EVALUATE, "report.md")

    # Ray's own storage -------------------------------------------------------------------
    def ray_storage(self, stage: str) -> str:
        """Ray Train's ``RunConfig.storage_path`` (or Tune's) for a stage's experiments."""
        return self.uri(SCRATCH, stage)

    def fail_marker(self, stage: str, job: str, run_hash: str) -> str:
        """The test hook's marker (``PAFO_RAY_FAIL_AT_EPOCH``): this job failed once already."""
        return self.uri(SCRATCH, stage, f"{job}-{run_hash}.failed_once")

    # files and folders at a URI of this run ----------------------------------------------
    def parts_of(self, uri: str) -> tuple:
        """The path parts under the run of ``uri`` (one of this layout's paths)."""
        path, root = uri.partition("?")[0].rstrip("/"), self.root.partition("?")[0].rstrip("/")
        if path != root and not path.startswith(root + ("/" if "://" in root else os.sep)):
            raise ValueError(f"{uri} is not under the run directory {self.root}")
        rest = path[len(root):].strip("/" + os.sep)
        return tuple(p for p in rest.replace(os.sep, "/").split("/") if p)

    def write_file(self, uri: str, data: bytes) -> None:
        self.write_bytes(data, *self.parts_of(uri))

    def read_file(self, uri: str) -> bytes:
        return self.read_bytes(*self.parts_of(uri))

    def local_path(self, uri: str) -> Optional[str]:
        """The local path of ``uri`` when the run is on the local filesystem, else None."""
        return self.local_dir(*self.parts_of(uri))

    def save_folder(self, local_dir: str, uri: str) -> None:
        """Copy a local folder (a saved model, a report) to ``uri``."""
        upload_dir(local_dir, self, *self.parts_of(uri))

    def fetch_folder(self, uri: str, local_dir: str) -> str:
        """A local copy of the folder at ``uri`` (the path itself when the run is local)."""
        return download_dir(self, local_dir, *self.parts_of(uri))

