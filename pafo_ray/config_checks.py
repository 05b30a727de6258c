"""Ranges and relations of config values, checked when a config is loaded.

A type check alone took ``train.epochs=-5`` or ``prepare.val_fraction=1.5``; they surfaced
stages later as "no user has training rows" or support rates above 1. Each rule here names
its key. Keys another version of the config may not have are skipped (the rules outlive
field renames), and :func:`annotated_yaml` prints a config with every key's help.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

# (test, wording): the value passes when test(value) is true. None values are not checked
# (an Optional field's None means "automatic").
Rule = tuple[Callable[[Any], bool], str]

POSITIVE: Rule = (lambda v: v > 0, "must be > 0")
AT_LEAST_1: Rule = (lambda v: v >= 1, "must be >= 1")
NON_NEGATIVE: Rule = (lambda v: v >= 0, "must be >= 0")
FRACTION: Rule = (lambda v: 0 <= v < 1, "must be in [0, 1)")
SHARE: Rule = (lambda v: 0 <= v <= 1, "must be in [0, 1]")
OPEN_UNIT: Rule = (lambda v: 0 < v < 1, "must be in (0, 1)")

RULES: dict[str, Rule] = {
    "run.ray.num_cpus": POSITIVE,
    "run.ray.num_gpus": NON_NEGATIVE,
    "run.ray.object_store_memory_mb": POSITIVE,
    "data.generator.num_users": POSITIVE,
    "data.generator.num_prompts": POSITIVE,
    "data.generator.responses_per_prompt": (lambda v: v >= 2, "must be >= 2 (a comparison "
                                            "needs two responses)"),
    "data.generator.pairs_per_prompt": POSITIVE,
    "data.generator.num_attributes": POSITIVE,
    "data.generator.minority_fraction": SHARE,
    "data.generator.rows_per_file": POSITIVE,
    "data.generator.dirichlet_concentration": POSITIVE,
    "data.generator.raters_train": POSITIVE,
    "data.generator.raters_eval": POSITIVE,
    "data.generator.label_beta": POSITIVE,
    "data.generator.val_fraction": FRACTION,
    "data.generator.test_fraction": FRACTION,
    "data.sim_num_users": POSITIVE,
    "data.sim_minority_fraction": SHARE,
    "data.sim_raters_train": POSITIVE,
    "data.sim_raters_eval": POSITIVE,
    "data.sim_label_beta": POSITIVE,
    "data.sim_max_prompts": POSITIVE,
    "prepare.min_raters": AT_LEAST_1,
    "prepare.prior_a": POSITIVE,
    "prepare.prior_b": POSITIVE,
    "prepare.num_groups": (lambda v: v >= 2, "must be >= 2 (groups are support buckets)"),
    "prepare.val_fraction": FRACTION,
    "prepare.test_fraction": FRACTION,
    "prepare.num_partitions": AT_LEAST_1,
    "prepare.rows_per_partition": POSITIVE,
    "groups.iterations": NON_NEGATIVE,
    "groups.l2": NON_NEGATIVE,
    "groups.min_users": AT_LEAST_1,
    "model.rank": POSITIVE,
    "model.user_shrinkage": NON_NEGATIVE,
    "model.mlp_hidden": POSITIVE,
    "model.dropout": FRACTION,
    "model.max_length": POSITIVE,
    "embed.batch_size": POSITIVE,
    "embed.num_actors": POSITIVE,
    "embed.num_gpus_per_actor": NON_NEGATIVE,
    "embed.cpus_per_actor": POSITIVE,
    "train.epochs": POSITIVE,
    "train.batch_size": POSITIVE,
    "train.lr": POSITIVE,
    "train.weight_decay": NON_NEGATIVE,
    "train.num_workers": NON_NEGATIVE,
    "train.pool_workers": NON_NEGATIVE,
    "train.cpus_per_worker": POSITIVE,
    "train.max_failures": NON_NEGATIVE,
    "train.checkpoint_every": POSITIVE,
    "teachers.min_rows": NON_NEGATIVE,
    "teachers.finetune_epochs": POSITIVE,
    "margins.batch_size": POSITIVE,
    "margins.num_actors": POSITIVE,
    "margins.num_gpus_per_actor": NON_NEGATIVE,
    "margins.extra_pairs_per_user": NON_NEGATIVE,
    "distill.lam": NON_NEGATIVE,
    "distill.minority_weight": POSITIVE,
    "distill.temperature": POSITIVE,
    "distill.clip": POSITIVE,
    "distill.extra_pairs": NON_NEGATIVE,
    "baselines.reweight_power": NON_NEGATIVE,
    "baselines.groupdro_eta": NON_NEGATIVE,
    "baselines.fairness_alpha": NON_NEGATIVE,
    "tune.num_samples": NON_NEGATIVE,
    "tune.max_concurrent_trials": AT_LEAST_1,
    "tune.epsilon": NON_NEGATIVE,
    "tune.cpus_per_trial": POSITIVE,
    "tune.gpus_per_trial": NON_NEGATIVE,
    "evaluate.bootstrap": NON_NEGATIVE,
    "evaluate.support_buckets": AT_LEAST_1,
    "evaluate.inline_rows": NON_NEGATIVE,
    "embed.inline_texts": NON_NEGATIVE,
}

# Lists whose every item follows a rule, and must be ascending when ``ascending``.
LIST_RULES: dict[str, tuple[Rule, bool]] = {
    "prepare.tau": (OPEN_UNIT, True),
    "prepare.user_quantile": (OPEN_UNIT, True),
    "train.weight_decay_grid": (NON_NEGATIVE, False),
    "train.user_shrinkage_grid": (NON_NEGATIVE, False),
}


# The input columns data.columns may map: schema.REQUIRED + schema.OPTIONAL (kept here so that
# loading a config imports no pyarrow; a test checks they agree).
MAPPABLE = ("user_id", "prompt", "chosen", "rejected", "weight", "support_rate", "split",
            "user_type", "margin")


def lookup(cfg: Any, key: str, default: Any = dataclasses.MISSING) -> Any:
    node = cfg
    for part in key.split("."):
        if not hasattr(node, part):
            if default is dataclasses.MISSING:
                raise KeyError(key)
            return default
        node = getattr(node, part)
    return node


_ABSENT = object()


def check_ranges(cfg: Any) -> list[str]:
    """Every broken rule of ``cfg`` as ``"<key>: <value> <wording>"`` (empty: all good)."""
    problems = []
    for key, (test, wording) in RULES.items():
        value = lookup(cfg, key, _ABSENT)
        if value is _ABSENT or value is None or isinstance(value, bool):
            continue
        if not test(value):
            problems.append(f"{key}: {value!r} {wording}")
    for key, ((test, wording), ascending) in LIST_RULES.items():
        values = lookup(cfg, key, _ABSENT)
        if values is _ABSENT:
            continue
        problems += [f"{key}[{i}]: {v!r} {wording}" for i, v in enumerate(values)
                     if isinstance(v, (int, float)) and not test(v)]
        if ascending and any(b <= a for a, b in zip(values, values[1:])):
            problems.append(f"{key}: {values!r} must be ascending")
    mapping = lookup(cfg, "data.columns", {})
    problems += [f"data.columns.{k}: not a column of ours (ours: {', '.join(MAPPABLE)})"
                 for k in mapping if k not in MAPPABLE]
    for section in ("prepare", "data.generator"):
        val = lookup(cfg, f"{section}.val_fraction", None)
        test = lookup(cfg, f"{section}.test_fraction", None)
        if val is not None and test is not None and val + test >= 1:
            problems.append(f"{section}.val_fraction + {section}.test_fraction: {val} + {test} "
                            "must be < 1 (no prompt would be left for training)")
    chosen, trained = lookup(cfg, "distill.teacher_init", None), lookup(cfg, "teachers.init", None)
    if chosen not in (None, "auto") and trained not in (None, "both") and chosen != trained:
        # Caught here, not after the teachers have trained.
        problems.append(f"distill.teacher_init: {chosen!r} needs teachers.init=both"
                        + ("" if chosen == "best" else f" (or {chosen})")
                        + f", got teachers.init={trained!r}")
    groups, trials = lookup(cfg, "prepare.num_groups", 2), lookup(cfg, "tune.num_samples", 0)
    if isinstance(groups, int) and groups != 2 and isinstance(trials, int) and trials > 0:
        # Caught here, not after the teachers have trained (the search's objectives are the
        # minority and majority groups' validation accuracy).
        problems.append(f"tune.num_samples: {trials} trials search the minority/majority "
                        f"trade-off and need prepare.num_groups=2, got {groups}; set "
                        "tune.num_samples=0 to distil with the configured weights")
    tuned, mode = lookup(cfg, "embed.tune_layers", 0), lookup(cfg, "model.mode", None)
    if isinstance(tuned, int) and tuned > 0 and mode == "finetune":
        problems.append(f"embed.tune_layers: {tuned} is for model.mode=frozen (finetune mode "
                        "trains the whole backbone with every model)")
    problems += _check_floats_finite(cfg, "")
    return problems


def _check_floats_finite(node: Any, prefix: str) -> list[str]:
    """nan/inf anywhere (a value set in code, not through load_config's parser)."""
    out = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out += _check_floats_finite(value, key + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(f"{key}: {value!r} must be a finite number")
    return out


# ---------------------------------------------------------------- show-config


def annotated_yaml(cfg: Any, width: int = 96) -> str:
    """The config as YAML, each key preceded by its help as a ``#`` comment."""
    lines: list[str] = []
    _emit(cfg, 0, lines, width)
    return "\n".join(lines) + "\n"


def _emit(node: Any, depth: int, lines: list, width: int) -> None:
    import textwrap

    import yaml

    indent = "  " * depth
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        help_text: Optional[str] = f.metadata.get("help") or (
            (value.__doc__ or "").strip() if dataclasses.is_dataclass(value)
            and value.__doc__ and not value.__doc__.startswith(type(value).__name__ + "(")
            else None)
        if help_text:
            for line in textwrap.wrap(help_text, width - len(indent) - 2):
                lines.append(f"{indent}# {line}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:")
            _emit(value, depth + 1, lines, width)
            continue
        text = yaml.safe_dump({f.name: value}, default_flow_style=True, width=10_000,
                              allow_unicode=True).strip()
        lines.append(f"{indent}{text[1:-1] if text.startswith('{') else text}")
