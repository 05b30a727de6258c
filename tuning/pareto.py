"""Pareto front, the PAFO selection rules and the 2-D hypervolume (DESIGN §2 "Pareto selection").

Pure numpy/pandas: the tune stage hands in one record per trial (its config and its
validation metrics) and gets back the front and the chosen trial. Every objective is
maximised. Trials whose objectives are NaN or ±inf (a diverged or failed trial) never
enter the front; how many were left out is reported, never dropped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd

from pafo_ray.metrics import accuracy_se  # noqa: F401 - the rule's SE; re-exported

OBJECTIVES = ("val_majority_accuracy", "val_minority_accuracy")
# How the trial is picked among the front members that meet the majority constraint
# (tune.selection): the highest validation minority accuracy; the most conservative within one
# standard error of it; or the default weights unless the best beats them by more than one SE.
RULES = ("best", "one_se", "beat_default")

# Slack on the majority constraint, so that baseline − ε computed in floating point
# (0.7 − 0.1 = 0.6000000000000001) does not reject a trial at exactly 0.6.
_TOLERANCE = 1e-12

Trials = Union[pd.DataFrame, Sequence[dict]]


def _frame(trials: Trials, objectives: Sequence[str]) -> pd.DataFrame:
    frame = trials.copy() if isinstance(trials, pd.DataFrame) else pd.DataFrame(list(trials))
    if len(frame) == 0:
        return pd.DataFrame(columns=list(objectives))
    missing = [name for name in objectives if name not in frame.columns]
    if missing:
        raise ValueError(f"trials have no objective column {missing[0]!r}; "
                         f"columns: {sorted(map(str, frame.columns))}")
    return frame


def _finite_mask(frame: pd.DataFrame, objectives: Sequence[str]) -> np.ndarray:
    values = frame[list(objectives)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    return np.isfinite(values).all(axis=1)


def _non_dominated(values: np.ndarray) -> np.ndarray:
    """Mask of the rows of ``values`` [n, m] that no other row dominates (maximisation).

    Row i dominates row j when it is ≥ in every objective and > in at least one, so
    identical rows do not dominate each other and all stay on the front.
    """
    geq = (values[:, None, :] >= values[None, :, :]).all(axis=2)  # [i, j]: i ≥ j everywhere
    gt = (values[:, None, :] > values[None, :, :]).any(axis=2)  # [i, j]: i > j somewhere
    return ~(geq & gt).any(axis=0)


def pareto_front(points: Trials, objectives: Sequence[str] = OBJECTIVES) -> pd.DataFrame:
    """The non-dominated points, all objectives maximised.

    Returns the rows of ``points`` (all columns, original index) that are on the front,
    sorted by the first objective ascending (the order in which to draw the front).
    Rows with a NaN/inf or missing objective are excluded; their count is in
    ``front.attrs["excluded"]``.
    """
    frame = _frame(points, objectives)
    finite = _finite_mask(frame, objectives) if len(frame) else np.zeros(0, bool)
    candidates = frame[finite]
    values = candidates[list(objectives)].to_numpy(float)
    front = candidates[_non_dominated(values)] if len(candidates) else candidates
    front = front.sort_values(list(objectives), ascending=[True] + [False] * (len(objectives) - 1),
                              kind="stable")
    front.attrs["excluded"] = int((~finite).sum())
    return front


@dataclass
class Selection:
    """The outcome of :func:`select`: the chosen trial (or None, with the reason)."""

    chosen: Optional[dict]
    rule: str
    front: list = field(default_factory=list)
    met_constraint: bool = False
    closest: Optional[dict] = None
    message: str = ""
    threshold: float = math.nan
    excluded: int = 0
    kept_default: bool = False


def _tie_key(frame: pd.DataFrame) -> pd.Series:
    """Sort key for "lowest trial_id": numbers compare as numbers, anything else as text."""
    if "trial_id" not in frame.columns:
        return pd.Series(np.arange(len(frame)), index=frame.index)
    ids = frame["trial_id"]
    numeric = pd.to_numeric(ids, errors="coerce")
    return numeric if numeric.notna().all() else ids.astype(str)


def _best(frame: pd.DataFrame, by: list[str], ascending: list[bool]) -> dict:
    ordered = frame.assign(_tie=_tie_key(frame)).sort_values(
        by + ["_tie"], ascending=ascending + [True], kind="stable")
    return ordered.drop(columns="_tie").iloc[0].to_dict()


def _describe(trial: dict, objectives: Sequence[str]) -> str:
    name = trial.get("trial_id", "?")
    scores = ", ".join(f"{obj}={trial[obj]:.4f}" for obj in objectives)
    return f"trial {name} ({scores})"


def select(trials: Trials, *, baseline_majority: float, epsilon: float = 0.0,
           objectives: Sequence[str] = OBJECTIVES, rule: str = "best",
           minority_se: float = math.nan, se_multiplier: float = 1.0,
           default: Optional[Sequence[float]] = None) -> Selection:
    """Pick the PAFO trial among the Pareto-front trials whose majority accuracy is at least
    ``baseline_majority − epsilon`` ("those that meet the constraint").

    ``rule`` (:data:`RULES`):

    - ``best``: the highest minority accuracy among them.
    - ``one_se``: the one-standard-error rule. With ``b`` the best minority accuracy among
      them and ``s = se_multiplier · minority_se``, the trials with minority ≥ ``b − s`` are
      indistinguishable from the best on validation; of those, the most conservative — the
      highest majority accuracy — is chosen.
    - ``beat_default``: the ``best`` trial only when its minority accuracy beats the default
      weights' (``default`` = ``(majority, minority)``) by more than ``s``; otherwise none is
      chosen, ``kept_default`` is True, and the distill stage keeps its configured weights.

    ``minority_se``: the standard error of a validation minority accuracy (e.g.
    :func:`accuracy_se` of the default student's rows, by user), needed by ``one_se`` and
    ``beat_default``. ``objectives`` is ``(majority, minority)``. Ties: higher majority
    accuracy, then the lowest ``trial_id`` (row order when there is none). When no front member
    meets the constraint, ``chosen`` is None and ``closest`` is the front member with the
    smallest majority shortfall (ties: higher minority accuracy); ``message`` says so.
    """
    if rule not in RULES:
        raise ValueError(f"selection rule must be one of {list(RULES)}, got {rule!r}")
    if rule != "best":
        if not (math.isfinite(minority_se) and minority_se >= 0):
            raise ValueError(f"rule {rule!r} needs a finite minority_se ≥ 0, got {minority_se!r}")
        if not (math.isfinite(se_multiplier) and se_multiplier > 0):
            raise ValueError(f"se_multiplier must be a finite number > 0, got {se_multiplier!r}")
    if rule == "beat_default" and (default is None or len(default) != 2
                                   or not all(map(math.isfinite, default))):
        raise ValueError(f"rule 'beat_default' needs the default weights' finite (majority, "
                         f"minority) validation point, got {default!r}")
    if len(objectives) != 2:
        raise ValueError(f"select needs (majority, minority) objectives, got {list(objectives)}")
    if not math.isfinite(baseline_majority):
        raise ValueError(f"baseline_majority must be a finite number, got {baseline_majority!r}")
    if not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be a finite number ≥ 0, got {epsilon!r}")
    majority, minority = objectives
    threshold = baseline_majority - epsilon
    band = se_multiplier * minority_se if rule != "best" else 0.0
    among = (f"Pareto-front trials with {majority} ≥ baseline {baseline_majority:.4f} − ε "
             f"{epsilon:g} = {threshold:.4f}")
    rule_text = {
        "best": f"highest {minority} among {among}",
        "one_se": (f"highest {majority} among {among} whose {minority} is within "
                   f"{se_multiplier:g} SE ({band:.4f}) of the best"),
        "beat_default": (f"highest {minority} among {among}, if it beats the default weights' "
                         f"{default[1] if default else math.nan:.4f} by more than {se_multiplier:g}"
                         f" SE ({band:.4f}); else the default weights"),
    }[rule]

    front = pareto_front(trials, objectives)
    excluded = front.attrs["excluded"]
    records = front.to_dict("records")
    left_out = f" ({excluded} trial(s) with NaN/inf objectives left out)" if excluded else ""
    result = Selection(chosen=None, rule=rule_text, front=records, threshold=threshold,
                       excluded=excluded)
    if front.empty:
        result.message = f"no trial has finite objectives, so none was chosen{left_out}"
        return result

    meets = front[front[majority] >= threshold - _TOLERANCE]
    if len(meets):
        best = _best(meets, [minority, majority], [False, False])
        result.met_constraint = True
        if rule == "one_se":
            within = meets[meets[minority] >= best[minority] - band - _TOLERANCE]
            best = _best(within, [majority, minority], [False, False])
        elif rule == "beat_default" and not best[minority] - default[1] > band:
            result.kept_default = True
            result.message = (f"kept the default weights: the best, "
                              f"{_describe(best, objectives)}, beats their {minority} "
                              f"{default[1]:.4f} by {best[minority] - default[1]:+.4f}, not more "
                              f"than {band:.4f}{left_out}")
            return result
        result.chosen = best
        result.message = f"chose {_describe(result.chosen, objectives)}{left_out}"
        return result

    shortfall = front.assign(_shortfall=threshold - front[majority])
    closest = _best(shortfall, ["_shortfall", minority], [True, False])
    gap = closest.pop("_shortfall")
    result.closest = closest
    result.message = (f"no trial met the constraint {majority} ≥ {threshold:.4f}; none was "
                      f"chosen. Closest: {_describe(closest, objectives)}, {gap:.4f} short"
                      f"{left_out}")
    return result


def hypervolume_2d(points: Union[Trials, Iterable[Sequence[float]], np.ndarray],
                   reference: Sequence[float] = (0.0, 0.0),
                   objectives: Sequence[str] = OBJECTIVES) -> float:
    """Area dominated by ``points`` and above ``reference`` (both objectives maximised).

    ``points``: pairs ``[n, 2]``, or trials (records / DataFrame) read at ``objectives``.
    Exact: sweep the points by the first objective, descending, adding the strip each
    point raises above the best second objective so far. Dominated points add nothing;
    non-finite points and points not beyond the reference in both objectives are ignored.
    """
    if isinstance(points, pd.DataFrame) or (
            isinstance(points, (list, tuple)) and points and isinstance(points[0], dict)):
        frame = _frame(points, objectives)
        values = frame[list(objectives)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    else:
        values = np.asarray(list(points) if not isinstance(points, np.ndarray) else points,
                            dtype=float)
    if values.size == 0:
        return 0.0
    if values.ndim != 2 or values.shape[1] != 2:
        raise ValueError(f"hypervolume_2d needs points of shape [n, 2], got {values.shape}")
    ref_x, ref_y = float(reference[0]), float(reference[1])
    keep = np.isfinite(values).all(axis=1) & (values[:, 0] > ref_x) & (values[:, 1] > ref_y)
    values = values[keep]
    order = np.lexsort((-values[:, 1], -values[:, 0]))  # x descending, then y descending
    area, best_y = 0.0, ref_y
    for x, y in values[order]:
        if y > best_y:
            area += (x - ref_x) * (y - best_y)
            best_y = y
    return float(area)
