"""``pafo-ray score``: input checks that name file/row/field, and Ray Data batch inference whose
rewards equal the in-process scorer (unknown users by the cold-start rule)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pafo_ray.config import ModelConfig
from pafo_ray.models import RewardModel, build_tiny_backbone
from pafo_ray.score import ScoreInputError, check_input

WORDS = ["hello", "world", "answer", "question", "short", "formal"]


def _jsonl(path, rows) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_check_input_names_file_row_and_field(tmp_path):
    good = [{"user_id": "a", "prompt": "p", "response": "r"}] * 2
    assert check_input(_jsonl(tmp_path / "ok.jsonl", good))[1] == "pointwise"
    bad = _jsonl(tmp_path / "missing.jsonl", [{"user_id": "a", "prompt": "p"}])
    with pytest.raises(ScoreInputError, match=r"missing.jsonl: missing field 'response'"):
        check_input(bad)
    rows = [{"user_id": "a", "prompt": "p", "chosen": "x", "rejected": "y"},
            {"user_id": "b", "prompt": "p", "chosen": "x", "rejected": None}]
    pd.DataFrame(rows).to_parquet(tmp_path / "pairs.parquet")
    with pytest.raises(ScoreInputError, match=r"pairs.parquet: row 1: field 'rejected' is null"):
        check_input(str(tmp_path / "pairs.parquet"))
    folder = tmp_path / "mixed"
    folder.mkdir()
    pd.DataFrame(rows[:1]).to_parquet(folder / "a.parquet")
    pd.DataFrame(good).to_parquet(folder / "b.parquet")
    with pytest.raises(ScoreInputError, match=r"b.parquet: pointwise rows, but earlier"):
        check_input(str(folder))
    pd.DataFrame([{"user_id": "a", "prompt": 3, "response": "r"}]).to_parquet(tmp_path / "n.parquet")
    with pytest.raises(ScoreInputError, match=r"n.parquet: field 'prompt' must be text"):
        check_input(str(tmp_path / "n.parquet"))
    with pytest.raises(ScoreInputError, match="no such file"):
        check_input(str(tmp_path / "nothing.jsonl"))


@pytest.mark.ray
def test_score_file_matches_the_in_process_scorer(ray_session, tmp_path):
    from pafo_ray.score import score_file

    backbone = build_tiny_backbone(tmp_path / "bert", vocab=WORDS)
    torch.manual_seed(0)
    model = RewardModel.from_config(ModelConfig(backbone=backbone, rank=4), ["a", "b"],
                                    input_dim=64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "student", include_backbone=True)
    users = ["a", "b", "new", "a", "b", 7]
    prompts = ["hello", "question", "world", "formal question", "hello world", "short"]
    rows = [{"user_id": u, "prompt": p, "chosen": f"answer {i}", "rejected": "short", "k": i}
            for i, (u, p) in enumerate(zip(users, prompts))]
    pd.DataFrame(rows).astype({"user_id": str}).to_parquet(tmp_path / "pairs.parquet")
    score_file(str(tmp_path / "student"), str(tmp_path / "pairs.parquet"), str(tmp_path / "out"),
               batch_size=4, cold_start="population")
    out = pd.read_parquet(tmp_path / "out").sort_values("k")
    model.cold_start = "population"
    str_users = [str(u) for u in users]
    chosen = model.score(str_users, prompts, [r["chosen"] for r in rows])
    rejected = model.score(str_users, prompts, ["short"] * len(rows))
    np.testing.assert_allclose(out["margin"], chosen - rejected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["reward_chosen"], chosen, rtol=1e-5, atol=1e-6)
    assert out["unknown_user"].tolist() == [False, False, True, False, False, True]
    points = _jsonl(tmp_path / "points.jsonl", [{"user_id": "a", "prompt": "hello",
                                                 "response": "short answer"}])
    score_file(str(tmp_path / "student"), points, str(tmp_path / "out2"))
    single = pd.read_parquet(tmp_path / "out2")
    np.testing.assert_allclose(single["reward"], model.score(["a"], ["hello"], ["short answer"]),
                               rtol=1e-5, atol=1e-6)
