"""``pafo-ray adapt``: new users from a file of answered comparisons, into a saved student."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pafo_ray.cli import main
from pafo_ray.config import ModelConfig
from pafo_ray.models import RewardModel, build_tiny_backbone

WORDS = ["hello", "world", "answer", "question", "short", "formal", "long", "casual"]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    backbone = build_tiny_backbone(root / "bert", vocab=WORDS)
    torch.manual_seed(0)
    users = [f"u{i}" for i in range(6)]
    model = RewardModel.from_config(ModelConfig(backbone=backbone, rank=4), users, input_dim=64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.set_user_groups({u: "minority" if i < 2 else "majority" for i, u in enumerate(users)})
    model.set_group_vectors({"minority": [1.0, -1.0, 0.5, 0.0], "majority": [-0.5, 0.5, 0, 0]})
    model.save_pretrained(root / "student", include_backbone=True)
    return root


def _answers(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_adapt_adds_users_that_score_with_their_fitted_vector(student_dir, tmp_path, capsys):
    rows = [{"user_id": uid, "prompt": "hello question", "chosen": c, "rejected": r}
            for uid in ("new1", "new2") for c, r in
            [("short answer", "long formal answer"), ("casual world", "formal world"),
             ("short", "long")]]
    answers = _answers(tmp_path / "answers.jsonl", rows)
    assert main(["adapt", str(student_dir / "student"), answers, str(tmp_path / "vec.json"),
                 "--vectors-only"]) == 0
    vectors = json.loads((tmp_path / "vec.json").read_text())
    assert set(vectors) == {"new1", "new2"} and vectors["new1"]["answers"] == 3
    assert set(vectors["new1"]["posterior"]) == {"minority", "majority"}
    assert vectors["new1"]["group"] in ("minority", "majority")
    # --prior flat: the smaller group's posterior rises for every user (its prior does).
    assert main(["adapt", str(student_dir / "student"), answers, str(tmp_path / "flat.json"),
                 "--vectors-only", "--prior", "flat"]) == 0
    flat = json.loads((tmp_path / "flat.json").read_text())
    groups = RewardModel.from_pretrained(student_dir / "student").user_groups.values()
    small = min(("minority", "majority"), key=lambda g: sum(1 for v in groups if v == g))
    rises = [flat[u]["posterior"][small] - vectors[u]["posterior"][small] for u in flat]
    assert all(d >= 0 for d in rises) and any(d > 0 for d in rises), rises
    out = tmp_path / "adapted"
    assert main(["adapt", str(student_dir / "student"), answers, str(out)]) == 0
    assert "new1: 3 answers, group" in capsys.readouterr().out
    adapted = RewardModel.from_pretrained(out)
    assert adapted.user_ids[-2:] == ["new1", "new2"]
    assert adapted.user_groups["new1"] == vectors["new1"]["group"]
    assert adapted.group_vectors  # kept for the next new user
    # Scored with the fitted vector, not the cold-start rule: no unknown user counted.
    got = adapted.score(["new1"], ["hello question"], ["short answer"])
    assert adapted.unknown_users_seen == 0
    phi = adapted.embed_texts(["hello question"], ["short answer"])
    want = adapted.head.score_vectors(phi, torch.tensor([vectors["new1"]["vector"]]))
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-5)
    # The original untouched; the same users again are refused.
    assert "new1" not in RewardModel.from_pretrained(student_dir / "student").user_ids
    assert main(["adapt", str(out), answers, str(tmp_path / "again")]) == 1
    assert "already have an embedding row" in capsys.readouterr().err


def test_adapt_one_user_by_flag_and_input_errors_name_the_field(student_dir, tmp_path, capsys):
    answers = _answers(tmp_path / "one.jsonl", [
        {"prompt": "q", "chosen": "short", "rejected": "long"}])
    assert main(["adapt", str(student_dir / "student"), answers, str(tmp_path / "v.json"),
                 "--user", "solo", "--vectors-only", "--place", "population"]) == 0
    solo = json.loads((tmp_path / "v.json").read_text())["solo"]
    assert solo["group"] is None and solo["answers"] == 1
    assert main(["adapt", str(student_dir / "student"), answers, str(tmp_path / "x")]) == 1
    assert "no user_id column" in capsys.readouterr().err
    bad = _answers(tmp_path / "bad.jsonl", [{"user_id": "a", "prompt": "q", "chosen": "x"}])
    assert main(["adapt", str(student_dir / "student"), bad, str(tmp_path / "x")]) == 1
    assert "missing column(s) ['rejected']" in capsys.readouterr().err
    bad = _answers(tmp_path / "bad2.jsonl", [
        {"user_id": "a", "prompt": "q", "chosen": "x", "rejected": "y"},
        {"user_id": "a", "prompt": "q", "chosen": None, "rejected": "y"}])
    assert main(["adapt", str(student_dir / "student"), bad, str(tmp_path / "x")]) == 1
    assert "bad2.jsonl: row 1: field 'chosen' must be text" in capsys.readouterr().err
    bad = _answers(tmp_path / "bad3.jsonl", [
        {"user_id": "a", "prompt": "q", "chosen": "x", "rejected": "y"},
        {"user_id": "a", "prompt": "q", "chosen": 3, "rejected": "y"}])
    assert main(["adapt", str(student_dir / "student"), bad, str(tmp_path / "x")]) == 1
    assert "bad3.jsonl: cannot read it" in capsys.readouterr().err


def test_active_session_from_texts_matches_the_passive_fit(student_dir):
    """model.active_session embeds the pool with the student's backbone; after two answers the
    added user's vector is fit_user's on the same answers, sides taken as answered."""
    prompts = ["hello question"] * 3
    a = ["short answer", "casual world", "short"]
    b = ["long formal answer", "formal world", "long"]
    model = RewardModel.from_pretrained(student_dir / "student")
    session = model.active_session(prompts, a, b)
    first = session.next()
    session.answer(first, prefers_a=True)
    second = session.next()
    assert second not in (None, first)
    session.answer(second, prefers_a=False)
    placed = session.add_user("new3")
    chosen = [a[first], b[second]]
    rejected = [b[first], a[second]]
    other = RewardModel.from_pretrained(student_dir / "student")
    same = other.fit_user("new3", prompts[:2], chosen, rejected, prior="flat")
    assert same.group == placed.group == model.user_groups["new3"]
    torch.testing.assert_close(same.vector, placed.vector)
    model.score(["new3"], ["hello question"], ["short answer"])
    assert model.unknown_users_seen == 0
