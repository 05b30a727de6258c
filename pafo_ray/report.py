"""The evaluation report: ``metrics.json``, ``report.md`` and PNG plots of a
:func:`pafo_ray.metrics.compare_methods` result.

Markdown uses the JSON names (``overall``, ``by.group``, ``per_user.std``, ...). Accuracies
are in percent with the user-bootstrap interval, ``65.2 [63.1, 67.0]``; gaps and differences
in signed percentage points, ``+8.8 [+7.1, +10.5]``. Plots use matplotlib's object API
(``Figure``, Agg), never pyplot's global state, so reports can be written from any thread.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

DIMENSION_TITLES = {"group": "Accuracy by support group", "user_type":
                    "Accuracy by true user type", "seen": "Seen and unseen users"}


def _json_safe(value):
    """Plain JSON types; NaN/inf → None, numpy scalars → Python, tuples → lists."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def percent_interval(estimate: dict | None, key: str = "value", signed: bool = False) -> str:
    """``{"value": .652, "lo": .631, "hi": .670}`` → ``"65.2 [63.1, 67.0]"`` (``signed``:
    ``"+65.2 [...]"``); a missing value → ``"–"``, missing bounds → the value alone."""
    if not estimate or estimate.get(key) is None:
        return "–"
    spec = "+.1f" if signed else ".1f"
    text = format(100 * estimate[key], spec)
    if estimate.get("lo") is None or estimate.get("hi") is None:
        return text
    return f"{text} [{100 * estimate['lo']:{spec}}, {100 * estimate['hi']:{spec}}]"


def number_interval(estimate: dict | None) -> str:
    """``{"value": .42, "lo": .3, "hi": .55}`` → ``"0.42 [0.30, 0.55]"`` (correlations)."""
    if not estimate or estimate.get("value") is None:
        return "–"
    if estimate.get("lo") is None or estimate.get("hi") is None:
        return f"{estimate['value']:.2f}"
    return f"{estimate['value']:.2f} [{estimate['lo']:.2f}, {estimate['hi']:.2f}]"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""]


def _groups(methods: dict, dim: str) -> list[str]:
    """Group order of a dimension, the union over methods (lowest support first)."""
    order: list[str] = []
    for result in methods.values():
        for g in result["by"].get(dim, {}).get("order", []):
            if g not in order:
                order.append(g)
    return order


def _interval_of(by_dim: dict, g: str) -> dict:
    lo, hi = by_dim.get("interval", {}).get(g, [None, None])
    return {"value": by_dim["by_group"].get(g), "lo": lo, "hi": hi}


def _summary(methods: dict) -> list[str]:
    groups = _groups(methods, "group")
    low, high = (groups[0], groups[-1]) if groups else ("minority", "majority")
    header = ["method", "overall", f"by.group.{low}", f"by.group.{high}", "by.group.gap",
              "per_user.mean", "per_user.std", "per_user.worst", "per_user.p10", "spearman",
              "tie_rate"]
    rows = []
    for name, m in methods.items():
        group = m["by"].get("group", {"by_group": {}})
        rows.append([name, percent_interval(m["overall"]), percent_interval(_interval_of(group, low)),
                     percent_interval(_interval_of(group, high)),
                     percent_interval(group.get("gap"), signed=True),
                     *(percent_interval(m["per_user"][k]) for k in ("mean", "std", "worst", "p10")),
                     number_interval(m["spearman"]), f"{100 * m['tie_rate']:.1f}"])
    return ["## Summary", "", *_table(header, rows)]


def _dimension(methods: dict, dim: str) -> list[str]:
    groups = _groups(methods, dim)
    if not groups:
        return []
    header = ["method", *groups, "gap", "group_min", "difference", "ratio", "count"]
    rows = []
    for name, m in methods.items():
        d = m["by"].get(dim)
        if d is None:
            continue
        ratio = "–" if d["ratio"] is None else f"{d['ratio']:.3f}"
        rows.append([name, *(percent_interval(_interval_of(d, g)) if g in d["by_group"] else "–"
                             for g in groups),
                     percent_interval(d.get("gap"), signed=True), f"{100 * d['group_min']:.1f}",
                     f"{100 * d['difference']:.1f}", ratio,
                     ", ".join(f"{g} {n}" for g, n in d["count"].items())])
    gap = f"`gap` = {groups[-1]} − {groups[0]}" if len(groups) > 1 else "one group only"
    return [f"## {DIMENSION_TITLES[dim]} (`by.{dim}`)", "", f"Percent; {gap}, in points.", "",
            *_table(header, rows)]


def _differences(metrics: dict) -> list[str]:
    differences = metrics.get("differences", {})
    if not differences:
        return []
    reference = metrics.get("reference", "vanilla")
    lines = [f"## Differences vs {reference} (`differences`)", "",
             "Method − reference on the same rows and user resamples, percentage points.", ""]
    sections = [("all rows", None)] + [(f"`by.{d}`", d) for d in ("group", "user_type", "seen")]
    for label, dim in sections:
        columns: list[str] = []
        for diff in differences.values():
            entries = diff if dim is None else diff.get("by", {}).get(dim, {})
            columns += [k for k in entries if k != "by" and k not in columns]
        if not columns:
            continue
        rows = [[name, *(percent_interval((diff if dim is None else diff["by"].get(dim, {}))
                                          .get(c), key="diff", signed=True) for c in columns)]
                for name, diff in differences.items()]
        lines += [f"### {label}", "", *_table(["method", *columns], rows)]
    return lines


def _bias_curve(methods: dict) -> list[str]:
    first = next(iter(methods.values()))
    header = ["support_rate bucket", *methods, "count"]
    rows = []
    last = len(first["bias_curve"]) - 1
    for k, bucket in enumerate(first["bias_curve"]):
        cells = [m["bias_curve"][k]["accuracy"] for m in methods.values()]
        rows.append([f"[{bucket['lo']:.2f}, {bucket['hi']:.2f}{']' if k == last else ')'}",
                     *("–" if c is None else f"{100 * c:.1f}" for c in cells), bucket["count"]])
    return ["## Bias curve (`bias_curve`)", "", "Accuracy (percent) by row support rate.", "",
            *_table(header, rows), "![bias curve](bias_curve.png)", ""]


def _trial_id(trial) -> str:
    return str(trial.get("trial_id") if isinstance(trial, dict) else trial)


def _pareto(pareto: dict) -> list[str]:
    """``pareto``: ``{"trials": [record], "front": [record | trial_id], "chosen": record |
    trial_id | None, "rule": str, "objectives"?: [names], "message"?: str}``; a record holds
    ``trial_id``, the objectives and the settings, flat or under ``"params"``/``"config"``
    (the shape of :func:`tuning.pareto.select` outputs). Objectives default to the record
    keys ending in ``accuracy``."""
    trials = [dict(t, **t.get("params", {}), **t.get("config", {}))
              for t in pareto.get("trials", [])]
    objectives = list(pareto.get("objectives") or
                      dict.fromkeys(k for t in trials for k in t if str(k).endswith("accuracy")))
    skip = {"trial_id", "params", "config", *objectives}
    params = list(dict.fromkeys(k for t in trials for k in t if k not in skip
                                and isinstance(t[k], (int, float, str, bool, type(None)))))
    front = {_trial_id(t) for t in pareto.get("front", [])}
    chosen = pareto.get("chosen")
    chosen_id = None if chosen is None else _trial_id(chosen)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    rows = [[_trial_id(t), *(fmt(t.get(o)) for o in objectives), *(fmt(t.get(p)) for p in params),
             "yes" if _trial_id(t) in front else "",
             "**chosen**" if _trial_id(t) == chosen_id else ""] for t in trials]
    return ["## Pareto front (tune)", "", f"Rule: {pareto.get('rule', '–')}", "",
            f"Chosen trial: {chosen_id or 'none'}; front: {', '.join(sorted(front)) or '–'}"
            + (f". {pareto['message']}" if pareto.get("message") else ""), "",
            *_table(["trial_id", *objectives, *params, "on front", "chosen"], rows)]


def _plots(out_dir: str, methods: dict) -> dict[str, str]:
    from matplotlib.figure import Figure

    paths = {k: os.path.join(out_dir, f"{k}.png")
             for k in ("bias_curve", "per_user_accuracy", "minority_vs_majority")}
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for name, m in methods.items():
        x = [(b["lo"] + b["hi"]) / 2 for b in m["bias_curve"]]
        y = [math.nan if b["accuracy"] is None else 100 * b["accuracy"] for b in m["bias_curve"]]
        ax.plot(x, y, marker="o", label=name)
    ax.set(xlabel="support rate (bucket centre)", ylabel="accuracy (%)", title="Bias curve")
    ax.legend()
    fig.savefig(paths["bias_curve"], dpi=120)

    fig = Figure(figsize=(max(4, 1.2 * len(methods) + 2), 4), layout="constrained")
    ax = fig.add_subplot()
    boxes = [{"label": name, "med": 100 * q["p50"], "q1": 100 * q["p25"], "q3": 100 * q["p75"],
              "whislo": 100 * q["p10"], "whishi": 100 * q["p90"], "fliers": []}
             for name, q in ((n, m["per_user"]["quantiles"]) for n, m in methods.items())]
    ax.bxp(boxes, showfliers=False)
    positions = range(1, len(methods) + 1)
    ax.scatter(positions, [100 * m["per_user"]["quantiles"]["p0"] for m in methods.values()],
               marker="x", color="tab:red", label="worst user")
    ax.scatter(positions, [100 * m["per_user"]["mean"]["value"] for m in methods.values()],
               marker="D", color="tab:green", label="mean")
    ax.set(ylabel="per-user accuracy (%)")
    ax.set_title("Per-user accuracy\nbox: quartiles, whiskers: p10–p90", fontsize=10)
    ax.legend()
    fig.savefig(paths["per_user_accuracy"], dpi=120)

    dims = [d for d in ("group", "user_type") if len(_groups(methods, d)) >= 2]
    fig = Figure(figsize=(5 * max(1, len(dims)), 4.5), layout="constrained")
    for i, dim in enumerate(dims or ["group"]):
        ax = fig.add_subplot(1, max(1, len(dims)), i + 1)
        groups = _groups(methods, dim)
        if len(groups) < 2:
            ax.text(0.5, 0.5, "fewer than two groups", ha="center")
            continue
        low, high = groups[0], groups[-1]
        for name, m in methods.items():
            d = m["by"].get(dim)
            if not d or low not in d["by_group"] or high not in d["by_group"]:
                continue
            x, y = _interval_of(d, low), _interval_of(d, high)
            err = lambda e: [[100 * (e["value"] - (e["lo"] if e["lo"] is not None  # noqa: E731
                                                   else e["value"]))],
                             [100 * ((e["hi"] if e["hi"] is not None else e["value"]) - e["value"])]]
            ax.errorbar(100 * x["value"], 100 * y["value"], xerr=err(x), yerr=err(y), fmt="o",
                        capsize=3, label=name)
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=0.8)
        ax.set(xlabel=f"{low} accuracy (%)", ylabel=f"{high} accuracy (%)",
               title=f"by.{dim}: {low} vs {high}")
        ax.legend()
    fig.savefig(paths["minority_vs_majority"], dpi=120)
    return paths


def write_report(out_dir: str, metrics: dict, *, title: str, notes: Sequence[str] = (),
                 pareto: dict | None = None) -> dict[str, str]:
    """Write ``metrics.json``, ``report.md`` and the PNG plots into ``out_dir`` (a local
    directory, created if needed); returns ``{"json", "markdown", "bias_curve",
    "per_user_accuracy", "minority_vs_majority"}`` → path.

    ``metrics``: a :func:`pafo_ray.metrics.compare_methods` result. ``notes``: bullet lines
    (fallbacks used, rows set aside). ``pareto``: see :func:`_pareto` for its keys.
    """
    methods = metrics.get("methods", {})
    if not methods:
        raise ValueError("write_report: metrics has no 'methods'; pass compare_methods(...)")
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "metrics.json"),
             "markdown": os.path.join(out_dir, "report.md")}
    with open(paths["json"], "w") as f:
        json.dump(_json_safe(metrics), f, indent=2, allow_nan=False)
    boot = metrics.get("bootstrap", {})
    level = round(100 * (1 - boot.get("alpha", 0.05)))
    lines = [f"# {title}", "",
             f"Accuracy in percent with {level}% intervals from {boot.get('resamples', '?')} "
             f"user resamples (seed {boot.get('seed', '?')}); gaps and differences in "
             "percentage points. Ties (margin 0) count as not correct. Names as in "
             "`metrics.json`.", ""]
    lines += _summary(methods)
    for dim in ("group", "user_type", "seen"):
        lines += _dimension(methods, dim)
    lines += _differences(metrics)
    lines += _bias_curve(methods)
    lines += ["## Per-user accuracy and group accuracy", "",
              "![per-user accuracy](per_user_accuracy.png)", "",
              "![minority vs majority](minority_vs_majority.png)", ""]
    if pareto is not None:
        lines += _pareto(pareto)
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    with open(paths["markdown"], "w") as f:
        f.write("\n".join(lines))
    paths.update(_plots(out_dir, methods))
    return paths
