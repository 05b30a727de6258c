"""write_report: files exist, JSON round-trips, Markdown names every method with intervals,
PNGs are real images."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pafo_ray.comparison import compare_methods
from pafo_ray.report import number_interval, percent_interval, write_report


def scored(margin_shift: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(0)  # the same rows for every method
    users = np.repeat(np.arange(30), 5)
    user_support = np.linspace(0.2, 0.9, 30)
    noise = np.random.default_rng(seed).normal(0, 0.3, len(users))
    return pd.DataFrame({
        "row_id": np.arange(len(users)), "user_id": users,
        "margin": rng.normal(0.3, 1.0, len(users)) + margin_shift + noise,
        "group": np.where(user_support[users] < 0.35, "minority", "majority"),
        "support_rate": rng.uniform(0, 0.75, len(users)),  # leaves the top bucket empty
        "user_support": user_support[users],
        "user_type": np.where(users < 8, "minority", "majority"),
        "seen": users < 25,
    })


@pytest.fixture(scope="module")
def metrics():
    frames = {"vanilla": scored(0.0), "pafo": scored(0.2, seed=1), "reweight": scored(0.1, 2)}
    return compare_methods(frames, bootstrap=100)


def test_interval_formatting():
    """0.652 [0.631, 0.670] → 65.2 [63.1, 67.0]; signed 0.088 [0.071, 0.105] →
    +8.8 [+7.1, +10.5]; a missing interval → the value alone."""
    assert percent_interval({"value": 0.652, "lo": 0.631, "hi": 0.670}) == "65.2 [63.1, 67.0]"
    assert percent_interval({"diff": 0.088, "lo": 0.071, "hi": 0.105}, key="diff",
                            signed=True) == "+8.8 [+7.1, +10.5]"
    assert percent_interval({"value": -0.01, "lo": None, "hi": None}, signed=True) == "-1.0"
    assert percent_interval(None) == "–"
    assert number_interval({"value": 0.42, "lo": 0.3, "hi": 0.55}) == "0.42 [0.30, 0.55]"


def test_write_report(tmp_path, metrics):
    pareto = {"objectives": ["majority_accuracy", "minority_accuracy"],
              "trials": [{"trial_id": "t0", "majority_accuracy": 0.65, "minority_accuracy": 0.56,
                          "params": {"lam": 0.5, "minority_weight": 2.0}},
                         {"trial_id": "t1", "majority_accuracy": 0.64, "minority_accuracy": 0.58,
                          "params": {"lam": 1.0, "minority_weight": 3.0}}],
              "front": ["t0", "t1"], "chosen": "t1",
              "rule": "highest minority accuracy with majority >= vanilla - 0.0"}
    paths = write_report(str(tmp_path / "report"), metrics, title="PAFO vs baselines",
                         notes=["minority teacher fell back to vanilla init"], pareto=pareto)
    assert set(paths) == {"json", "markdown", "bias_curve", "per_user_accuracy",
                          "minority_vs_majority"}

    with open(paths["json"]) as f:
        assert json.load(f) == metrics

    text = open(paths["markdown"]).read()
    assert text.startswith("# PAFO vs baselines")
    for method in ("vanilla", "pafo", "reweight"):
        assert f"| {method} |" in text
    for name in ("by.group.minority", "per_user.std", "spearman", "`by.user_type`",
                 "`by.seen`", "Differences vs vanilla", "minority_accuracy", "gap"):
        assert name in text
    overall = metrics["methods"]["pafo"]["overall"]
    assert percent_interval(overall) in text
    assert re.search(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", text)
    assert re.search(r"[+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]", text)
    assert "- minority teacher fell back to vanilla init" in text
    assert "| t1 | 0.64 | 0.58 | 1 | 3 | yes | **chosen** |" in text
    assert "Rule: highest minority accuracy" in text
    assert "| – |" in text  # the empty top support bucket

    for key in ("bias_curve", "per_user_accuracy", "minority_vs_majority"):
        with Image.open(paths[key]) as image:
            image.verify()
        with Image.open(paths[key]) as image:
            assert image.format == "PNG"
            assert image.width >= 400 and image.height >= 300
            low, high = image.convert("L").getextrema()
            assert high - low > 100  # something drawn, not a blank canvas


def test_nan_becomes_null_and_empty_metrics_rejected(tmp_path, metrics):
    broken = json.loads(json.dumps(metrics))
    broken["methods"]["pafo"]["spearman"]["value"] = float("nan")
    paths = write_report(str(tmp_path), broken, title="t")
    with open(paths["json"]) as f:
        assert json.load(f)["methods"]["pafo"]["spearman"]["value"] is None
    with pytest.raises(ValueError, match="compare_methods"):
        write_report(str(tmp_path), {}, title="t")


def test_pareto_from_flat_selection_records(tmp_path, metrics):
    """tuning.pareto.select hands back flat records: chosen and front are records, not ids."""
    trials = [{"trial_id": 3, "val_majority_accuracy": 0.61, "val_minority_accuracy": 0.5,
               "distill.lam": 0.25},
              {"trial_id": 7, "val_majority_accuracy": 0.6, "val_minority_accuracy": 0.55,
               "distill.lam": 2.0}]
    pareto = {"trials": trials, "front": trials, "chosen": trials[1],
              "rule": "max minority s.t. majority >= baseline - 0.0", "message": "chose 7"}
    text = open(write_report(str(tmp_path), metrics, title="t", pareto=pareto)["markdown"]).read()
    assert ("| trial_id | val_majority_accuracy | val_minority_accuracy | distill.lam | on front "
            "| chosen |") in text
    assert "| 7 | 0.6 | 0.55 | 2 | yes | **chosen** |" in text
    assert "| 3 | 0.61 | 0.5 | 0.25 | yes |  |" in text
    assert "Chosen trial: 7; front: 3, 7. chose 7" in text
