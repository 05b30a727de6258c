"""The self-contained student checkpoint: model_type + AutoConfig, the frozen backbone copied or
pinned, old (format 1) folders, and loads from a local folder, moto S3 and a mocked hub cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pafo_ray.config import ModelConfig
from pafo_ray.models import RewardModel, build_tiny_backbone

WORDS = ["hello", "world", "answer", "question", "short", "formal"]
USERS = ["alice", "bob", "carol"]
SCORE_USERS = ["alice", "bob", "mallory", "carol"]  # mallory is unknown
PROMPTS = ["hello question", "a formal question?", "hello", "world"]
RESPONSES = ["short answer", "the world, formally.", "answer", "formal answer"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return build_tiny_backbone(tmp_path_factory.mktemp("bert"), arch="bert", vocab=WORDS)


@pytest.fixture()
def student(tiny_bert) -> RewardModel:
    torch.manual_seed(3)
    model = RewardModel.from_config(ModelConfig(backbone=tiny_bert, rank=4), USERS, input_dim=64)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.set_user_groups({"alice": "minority", "bob": "majority", "carol": "majority",
                           "zed": "minority"})  # zed has no row: ignored
    return model


def test_autoconfig_round_trip(student, tmp_path):
    from transformers import AutoConfig

    import pafo_ray.models.hf_config as hf

    student.save_pretrained(tmp_path / "s")
    cfg = AutoConfig.from_pretrained(str(tmp_path / "s"))
    assert isinstance(cfg, hf.PafoRewardConfig) and cfg.model_type == "pafo_reward"
    assert cfg.input_dim == 64 and cfg.num_users == 3 and cfg.model["rank"] == 4
    assert cfg.backbone_ref["name"] == student.model_cfg.backbone
    assert cfg.backbone_ref["revision"].startswith("sha256:")
    # The config transformers writes back still loads as a RewardModel.
    cfg.save_pretrained(str(tmp_path / "s"))
    again = RewardModel.from_pretrained(tmp_path / "s")
    assert again.user_groups == {"alice": "minority", "bob": "majority", "carol": "majority"}


def test_frozen_backbone_copied_scores_identically_without_the_original(student, tiny_bert,
                                                                         tmp_path):
    expected = student.score(SCORE_USERS, PROMPTS, RESPONSES)
    student.save_pretrained(tmp_path / "s", include_backbone=True)
    assert (tmp_path / "s" / "backbone" / "config.json").exists()
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_bert, moved)
    shutil.rmtree(tiny_bert)  # the original backbone is gone: only the copy can serve
    try:
        loaded = RewardModel.from_pretrained(tmp_path / "s")
        np.testing.assert_array_equal(loaded.score(SCORE_USERS, PROMPTS, RESPONSES), expected)
        loaded.save_pretrained(tmp_path / "t", include_backbone=True)  # copies the copy
        assert json.loads((tmp_path / "t" / "config.json").read_text())["backbone_ref"] == \
            json.loads((tmp_path / "s" / "config.json").read_text())["backbone_ref"]
    finally:
        shutil.copytree(moved, tiny_bert)


def test_format_1_folder_without_model_type_still_loads(student, tmp_path):
    student.save_pretrained(tmp_path / "s")
    path = tmp_path / "s" / "config.json"
    config = json.loads(path.read_text())
    for key in ("model_type", "architectures", "backbone_ref"):
        config.pop(key)
    config["format_version"] = 1
    path.write_text(json.dumps(config))
    (tmp_path / "s" / "user_groups.json").unlink()
    phi = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    loaded = RewardModel.from_pretrained(tmp_path / "s")
    np.testing.assert_array_equal(loaded.score(SCORE_USERS, PROMPTS, RESPONSES, embeddings=phi),
                                  student.score(SCORE_USERS, PROMPTS, RESPONSES, embeddings=phi))
    config["format_version"] = 7
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format_version 7"):
        RewardModel.from_pretrained(tmp_path / "s")


def test_changed_pinned_backbone_warns(student, tiny_bert, tmp_path, caplog):
    student.save_pretrained(tmp_path / "s")
    path = tmp_path / "s" / "config.json"
    config = json.loads(path.read_text())
    config["backbone_ref"]["revision"] = "sha256:0000"
    path.write_text(json.dumps(config))
    loaded = RewardModel.from_pretrained(tmp_path / "s")
    with caplog.at_level("WARNING"):
        loaded.score(USERS, PROMPTS[:3], RESPONSES[:3])
    assert "sha256:0000" in caplog.text


def test_hub_id_from_a_local_hub_cache(student, tmp_path, monkeypatch):
    expected = student.score(SCORE_USERS, PROMPTS, RESPONSES)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--pafo-student"
    student.save_pretrained(repo / "snapshots" / commit, include_backbone=True)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = RewardModel.from_pretrained("someone/pafo-student", cache_dir=str(tmp_path / "hub"))
    np.testing.assert_array_equal(loaded.score(SCORE_USERS, PROMPTS, RESPONSES), expected)
    with pytest.raises(FileNotFoundError, match="someone/missing"):
        RewardModel.from_pretrained("someone/missing", cache_dir=str(tmp_path / "hub"))


def test_s3_round_trip_with_identical_scores(student, tmp_path):
    import boto3
    from moto.server import ThreadedMotoServer
    from pyarrow import fs as pafs
    from test_remote_storage import BUCKET, _free_port

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing",
                     ).create_bucket(Bucket=BUCKET)
        expected = student.score(SCORE_USERS, PROMPTS, RESPONSES)
        student.save_pretrained(tmp_path / "s", include_backbone=True)
        s3 = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                               endpoint_override=f"127.0.0.1:{port}", scheme="http")
        pafs.copy_files(str(tmp_path / "s"), f"{BUCKET}/models/student",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
        query = f"endpoint_override=127.0.0.1:{port}&scheme=http"
        uri = f"s3://testing:testing@{BUCKET}/models/student?{query}"
        loaded = RewardModel.from_pretrained(uri)
        np.testing.assert_array_equal(loaded.score(SCORE_USERS, PROMPTS, RESPONSES), expected)
        assert loaded.user_groups["alice"] == "minority"
        with pytest.raises(FileNotFoundError, match="no config.json"):
            RewardModel.from_pretrained(f"s3://testing:testing@{BUCKET}/models/none?{query}")
    finally:
        server.stop()
