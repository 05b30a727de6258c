"""The tune stage's search space: a YAML file of the student's distillation weights and
PAFO levers, turned into a Ray Tune ``param_space``.

Each key names a field the trainer understands — of :class:`DistillConfig` (section
``distill``), ``lr`` / ``weight_decay`` of :class:`TrainConfig` (section ``train``) or
``user_shrinkage`` of :class:`ModelConfig` (the student's pull of user offsets to g) — and
maps to one of::

    lam: {type: loguniform, low: 0.05, high: 10.0}
    clip: {type: uniform, low: 2.0, high: 20.0}
    epochs_like: {type: int, low: 2, high: 8, step: 2}   # bounds included; log: true allowed
    loss: {type: choice, values: [mse, kl]}
    scope: {type: fixed, value: all}                     # or simply `scope: all`

Values are checked against the field's type (a choice of ``loss`` must be ``mse`` or
``kl``). Ray is imported only when :func:`load_space` builds the Tune domains.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import typing
from typing import Any, Optional

from pafo_ray.config import (
    BaselinesConfig,
    ConfigError,
    DistillConfig,
    ModelConfig,
    PipelineConfig,
    TrainConfig,
    check_value,
)

SPACE_FILE = "space.yaml"
BASELINE_SPACE_FILE = "baselines.yaml"
# Each baseline's own setting: what its search may vary (tuning/baselines.yaml).
BASELINE_KEYS = {"reweight": ("reweight_power",), "groupdro": ("groupdro_eta",),
                 "fairness_penalty": ("fairness_alpha",),
                 "faro_dp": ("faro_epsilon", "faro_dual_lr"),
                 "faro_eo": ("faro_epsilon", "faro_dual_lr")}
TYPES = ("uniform", "loguniform", "int", "choice", "fixed")
_SPEC_KEYS = {
    "uniform": {"low", "high"},
    "loguniform": {"low", "high"},
    "int": {"low", "high", "step", "log"},
    "choice": {"values"},
    "fixed": {"value"},
}
# use_tuned says whether to take the tune stage's result at all: not a lever to search.
_NOT_SEARCHABLE = {"use_tuned"}


def _searchable() -> dict[str, tuple[str, Any]]:
    """Searchable key -> (config section, field type)."""
    fields: dict[str, tuple[str, Any]] = {}
    distill_types = typing.get_type_hints(DistillConfig)
    for f in dataclasses.fields(DistillConfig):
        if f.name not in _NOT_SEARCHABLE:
            fields[f.name] = ("distill", distill_types[f.name])
    train_types = typing.get_type_hints(TrainConfig)
    for name in ("lr", "weight_decay"):
        fields[name] = ("train", train_types[name])
    # The student's pull of user offsets towards the population vector g.
    fields["user_shrinkage"] = ("model", typing.get_type_hints(ModelConfig)["user_shrinkage"])
    baseline_types = typing.get_type_hints(BaselinesConfig)
    for keys in BASELINE_KEYS.values():
        for name in keys:
            fields[name] = ("baselines", baseline_types[name])
    return fields


SEARCHABLE = _searchable()


def default_space_path(name: str = SPACE_FILE) -> str:
    """Path of a search space shipped with the ``tuning`` package."""
    return str(importlib.resources.files("tuning").joinpath(name))


def _number(value: Any, where: str, what: str) -> float:
    # PyYAML reads `1e-3` (no dot) as a string; accept it, since users write it that way.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{where}: {what} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {what} must be a finite number, got {value!r}")
    return value


def _check_field_value(value: Any, key: str, where: str) -> Any:
    try:
        return check_value(value, SEARCHABLE[key][1], key)
    except ConfigError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _field_kind(key: str) -> Optional[type]:
    """The numeric type under a field's Optional, or None when it is not numeric."""
    tp = SEARCHABLE[key][1]
    if typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp if tp in (int, float) else None


def check_entry(key: str, spec: Any, source: str = "search space") -> dict:
    """Validate one entry; returns it normalised (``{"type": ..., ...}`` with numbers as numbers).

    Raises ValueError naming ``source`` and ``key`` on an unknown key, an unknown type,
    missing or extra settings, bounds that are not ``low < high`` (loguniform: ``low > 0``),
    or values the config field cannot take.
    """
    where = f"{source}: {key}"
    if key not in SEARCHABLE:
        raise ValueError(f"{source}: unknown search key {key!r}; searchable fields: "
                         f"{sorted(SEARCHABLE)}")
    if not isinstance(spec, dict):
        spec = {"type": "fixed", "value": spec}
    kind = spec.get("type")
    if kind not in TYPES:
        raise ValueError(f"{where}: unknown type {kind!r}; expected one of {list(TYPES)}")
    given = set(spec) - {"type"}
    required = _SPEC_KEYS[kind] - {"step", "log"}
    if required - given:
        raise ValueError(f"{where}: type {kind} needs {sorted(required - given)}")
    if given - _SPEC_KEYS[kind]:
        raise ValueError(f"{where}: type {kind} takes {sorted(_SPEC_KEYS[kind])}, "
                         f"not {sorted(given - _SPEC_KEYS[kind])}")

    if kind == "fixed":
        return {"type": kind, "value": _check_field_value(spec["value"], key, where)}
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: choice needs a non-empty list of values, got {values!r}")
        return {"type": kind, "values": [_check_field_value(v, key, where) for v in values]}

    numeric = _field_kind(key)
    if numeric is None:
        raise ValueError(f"{where}: type {kind} needs a numeric field; use choice or fixed")
    low, high = _number(spec["low"], where, "low"), _number(spec["high"], where, "high")
    if low >= high:
        raise ValueError(f"{where}: low ({low}) must be below high ({high})")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{where}: loguniform needs low > 0, got {low}")
    if kind != "int":
        if numeric is int:
            raise ValueError(f"{where}: {key} is an integer field; use type int")
        return {"type": kind, "low": float(low), "high": float(high)}

    step = _number(spec.get("step", 1), where, "step")
    log = spec.get("log", False)
    if any(isinstance(v, float) and not v.is_integer() for v in (low, high, step)) or step < 1:
        raise ValueError(f"{where}: int needs whole-number low, high and step ≥ 1")
    if not isinstance(log, bool):
        raise ValueError(f"{where}: log must be true or false, got {log!r}")
    if log and (low <= 0 or step != 1):
        raise ValueError(f"{where}: a log int range needs low > 0 and step 1")
    return {"type": kind, "low": int(low), "high": int(high), "step": int(step), "log": log}


def _read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path) as fh:
            tree = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ValueError(f"search space file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"search space file {path} is not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ValueError(f"search space file {path}: expected a mapping of key: spec, "
                         f"got {type(tree).__name__}")
    return tree


def read_space(path: Optional[str] = None, overrides: Optional[dict] = None) -> dict:
    """The validated entries of ``path`` (default: the shipped file) with ``overrides``
    applied: ``{key: spec}`` replaces an entry; a plain value fixes the key to it."""
    path = path or default_space_path()
    tree = _read_yaml(path)
    entries = {key: check_entry(key, spec, path) for key, spec in tree.items()}
    for key, spec in (overrides or {}).items():
        entries[key] = check_entry(key, spec, "search space override")
    return entries


def _domain(spec: dict) -> Any:
    from ray import tune

    kind = spec["type"]
    if kind == "fixed":
        return spec["value"]
    if kind == "choice":
        return tune.choice(spec["values"])
    if kind == "uniform":
        return tune.uniform(spec["low"], spec["high"])
    if kind == "loguniform":
        return tune.loguniform(spec["low"], spec["high"])
    # Our bounds are inclusive; tune.randint/lograndint exclude `upper`, qrandint includes it.
    if spec["log"]:
        return tune.lograndint(spec["low"], spec["high"] + 1)
    if spec["step"] == 1:
        return tune.randint(spec["low"], spec["high"] + 1)
    return tune.qrandint(spec["low"], spec["high"], spec["step"])


def read_baseline_spaces(path: Optional[str] = None) -> dict:
    """``{method: {key: spec}}`` of the baselines' own searches (default: the shipped
    ``tuning/baselines.yaml``). A method may only vary its own settings (:data:`BASELINE_KEYS`)."""
    path = path or default_space_path(BASELINE_SPACE_FILE)
    out = {}
    for method, entries in _read_yaml(path).items():
        if method not in BASELINE_KEYS:
            raise ValueError(f"{path}: unknown baseline {method!r}; baselines: {sorted(BASELINE_KEYS)}")
        if not isinstance(entries, dict) or not entries:
            raise ValueError(f"{path}: {method}: expected a mapping of key: spec")
        for key in entries:
            if key not in BASELINE_KEYS[method]:
                raise ValueError(f"{path}: {method}: {key!r} is not a setting of {method}; "
                                 f"it has {list(BASELINE_KEYS[method])}")
        out[method] = {key: check_entry(key, spec, f"{path}: {method}")
                       for key, spec in entries.items()}
    return out


def domains(entries: dict) -> dict:
    """Ray Tune domains of validated entries (see :func:`load_space`)."""
    return {key: _domain(spec) for key, spec in entries.items()}


def load_space(path: Optional[str] = None, overrides: Optional[dict] = None) -> dict:
    """Ray Tune search space (``param_space``) from the YAML at ``path`` plus ``overrides``.

    Returns ``{key: tune domain}`` (``fixed`` entries as plain constants), ready for
    ``Tuner(param_space=...)`` and a multi-objective ``OptunaSearch``.
    """
    return domains(read_space(path, overrides))


def apply_params(config: PipelineConfig, params: dict) -> PipelineConfig:
    """A copy of ``config`` with a trial's sampled ``params`` written into their sections
    (``lam`` -> ``distill.lam``, ``lr`` -> ``train.lr``); other keys are ignored."""
    changes: dict[str, dict] = {}
    for key, value in params.items():
        if key in SEARCHABLE:
            section = SEARCHABLE[key][0]
            changes.setdefault(section, {})[key] = _check_field_value(value, key, "trial params")
    sections = {name: dataclasses.replace(getattr(config, name), **values)
                for name, values in changes.items()}
    return dataclasses.replace(config, **sections)
