"""The Pareto plot of the tune stage: every trial, the front, the chosen trial and the
baselines, majority accuracy on x and minority accuracy on y."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import pandas as pd

from tuning.pareto import OBJECTIVES

_BASELINE_MARKERS = ("s", "D", "^", "v", "P", "X", "h", "<", ">")


def plot_front(trials: pd.DataFrame, front: pd.DataFrame, chosen: Optional[dict],
               baselines: dict[str, tuple[float, float]], path: str,
               objectives: Sequence[str] = OBJECTIVES,
               threshold: Optional[float] = None) -> str:
    """Write a PNG to ``path`` and return ``path``.

    trials: every trial (grey); front: the Pareto front (highlighted, joined in order of
    majority accuracy); chosen: the selected trial (a star) or None; baselines:
    ``{name: (majority_accuracy, minority_accuracy)}``, each a labelled marker;
    threshold: the majority accuracy the rule requires (a dashed vertical line).
    """
    # Figure + the Agg canvas directly: no pyplot, so no global backend or open figures.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x_name, y_name = objectives
    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    if len(trials):
        ax.scatter(trials[x_name], trials[y_name], color="0.7", s=18, label="trials", zorder=1)
    if len(front):
        ordered = front.sort_values(x_name)
        ax.plot(ordered[x_name], ordered[y_name], "-o", color="tab:blue", markersize=5,
                label="Pareto front", zorder=2)
    if chosen is not None:
        ax.scatter([chosen[x_name]], [chosen[y_name]], marker="*", s=260, color="tab:red",
                   edgecolor="black", label="chosen", zorder=4)
    for i, (name, (majority, minority)) in enumerate(baselines.items()):
        marker = _BASELINE_MARKERS[i % len(_BASELINE_MARKERS)]
        ax.scatter([majority], [minority], marker=marker, s=60, edgecolor="black",
                   label=name, zorder=3)
        ax.annotate(name, (majority, minority), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    if threshold is not None:
        ax.axvline(threshold, linestyle="--", color="0.4", linewidth=1,
                   label=f"majority ≥ {threshold:.3f}")

    ax.set_xlabel(x_name.replace("_", " "))
    ax.set_ylabel(y_name.replace("_", " "))
    ax.set_title("Tune trials: majority vs minority accuracy")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, format="png")
    return path
