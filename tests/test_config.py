"""The typed config: shipped YAML binds, bad keys/types/values fail naming the key,
overrides are read as YAML, and a stage's section hash follows its fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from pafo_ray.config import (
    ConfigError,
    PipelineConfig,
    config_from_dict,
    load_config,
    parse_override,
)

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {f.name for f in dataclasses.fields(PipelineConfig)}


def pipeline_yaml_files() -> list:
    """Every pipeline config the project ships: cluster/*.yaml except Kubernetes manifests
    (``apiVersion``) and Ray runtime_env files, plus configs/ and pafo_ray/configs/."""
    found = []
    for path in sorted((REPO / "cluster").glob("*.yaml")):
        tree = yaml.safe_load(path.read_text()) or {}
        if "apiVersion" in tree or path.name == "runtime_env.yaml":
            continue
        found.append(path)
    for folder in (REPO / "configs", REPO / "pafo_ray" / "configs"):
        found += sorted(folder.rglob("*.yaml")) + sorted(folder.rglob("*.yml"))
    return found


def test_the_pipeline_yaml_files_are_found():
    names = {p.name for p in pipeline_yaml_files()}
    assert {"local.yaml", "gpu.yaml"} <= names, names
    assert "rayjob.yaml" not in names and "raycluster.yaml" not in names


@pytest.mark.parametrize("path", pipeline_yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_yaml_binds(path):
    tree = yaml.safe_load(path.read_text())
    assert set(tree) <= SECTIONS, f"{path}: top-level keys {sorted(set(tree) - SECTIONS)}"
    cfg = load_config(str(path))
    assert isinstance(cfg, PipelineConfig)
    # Every value the file sets is the value bound (nothing silently ignored or defaulted).
    bound = cfg.to_dict()

    def check(node, got, where):
        for key, value in node.items():
            if isinstance(value, dict):
                check(value, got[key], f"{where}{key}.")
            elif isinstance(value, int) and not isinstance(value, bool) and isinstance(got[key], float):
                assert got[key] == float(value), f"{where}{key}"
            else:
                assert got[key] == value, f"{path}: {where}{key} bound as {got[key]!r}"

    check(tree, bound, "")


@pytest.mark.parametrize("overrides, key", [
    (["train.epoch=3"], "train.epoch"),                     # unknown field
    (["trainer.epochs=3"], "trainer"),                       # unknown section
    (["run.ray.adress=auto"], "run.ray.adress"),             # unknown nested field
    (["train.epochs=three"], "train.epochs"),                # str for int
    (["train.epochs=2.5"], "train.epochs"),                  # float for int
    (["train.epochs=true"], "train.epochs"),                 # bool is not an int
    (["train.lr=fast"], "train.lr"),                         # str for float
    (["run.force=1"], "run.force"),                          # int for bool
    (["prepare.tau=0.5"], "prepare.tau"),                    # scalar for list
    (["model.head=linear"], "model.head"),                   # bad Literal
    (["distill.margin_norm=zscore"], "distill.margin_norm"),  # bad Literal
    (["model.mode=None"], "model.mode"),                     # None is not a Literal value
    (["train=5"], "train"),                                  # a section given a scalar
])
def test_bad_override_names_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert key in str(info.value)


def test_bad_yaml_file_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_sise: 8\n")
    with pytest.raises(ConfigError, match=r"train\.batch_sise"):
        load_config(str(path))
    path.write_text("model:\n  pooling: max\n")
    with pytest.raises(ConfigError, match=r"model\.pooling.*'max'"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))


def test_overrides_are_read_as_yaml():
    assert parse_override("train.lr=0.01") == ("train.lr", 0.01)
    # YAML's None is null (or ~); "None" is the string, which a number field refuses by name.
    assert parse_override("data.generator.label_beta=null") == ("data.generator.label_beta", None)
    assert parse_override("data.generator.label_beta=~") == ("data.generator.label_beta", None)
    with pytest.raises(ConfigError, match=r"data\.generator\.label_beta"):
        load_config(None, ["data.generator.label_beta=None"])
    assert parse_override("prepare.tau=[0.3, 0.6]") == ("prepare.tau", [0.3, 0.6])
    assert parse_override("run.stages=[input,prepare]") == ("run.stages", ["input", "prepare"])
    assert parse_override("run.run_name=a=b") == ("run.run_name", "a=b")
    assert parse_override("run.run_name=") == ("run.run_name", "")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.lr")

    cfg = load_config(None, ["train.lr=1.0e-2", "data.generator.label_beta=null",
                             "prepare.num_groups=3", "prepare.tau=[0.3, 0.6]", "tune.num_samples=0",
                             "distill.clip=null", "train.epochs=7", "run.force=true",
                             "model.rank=4", "distill.lam=2"])
    assert cfg.train.lr == 0.01 and isinstance(cfg.train.lr, float)
    assert cfg.data.generator.label_beta is None
    assert cfg.prepare.tau == [0.3, 0.6] and cfg.prepare.num_groups == 3
    assert cfg.distill.clip is None and cfg.train.epochs == 7 and cfg.run.force is True
    # An int where a float is expected is accepted and stored as a float.
    assert cfg.distill.lam == 2.0 and isinstance(cfg.distill.lam, float)
    # Untouched fields keep their defaults.
    assert cfg.train.batch_size == PipelineConfig().train.batch_size


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: 0.5\nrun:\n  run_name: from-file\n")
    cfg = load_config(str(path), ["train.lr=0.25"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.run.run_name) == (3, 0.25, "from-file")


def test_round_trip_through_a_dict():
    cfg = load_config(None, ["train.epochs=3", "model.head=mlp", "prepare.tau=[0.4]"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg


def test_section_hash_follows_the_fields_it_covers():
    base = PipelineConfig()
    same = load_config(None, [])
    assert base.section_hash("train") == same.section_hash("train")
    changed = load_config(None, ["train.lr=0.1234"])
    assert changed.section_hash("train") != base.section_hash("train")
    assert changed.section_hash("model", "train") != base.section_hash("model", "train")
    # A field of another section does not move this section's hash.
    assert changed.section_hash("model") == base.section_hash("model")
    nested = load_config(None, ["data.generator.num_users=17"])
    assert nested.section_hash("data") != base.section_hash("data")
    assert nested.section_hash("train") == base.section_hash("train")
    # Setting a field to its default value is not a change.
    default_lr = PipelineConfig().train.lr
    assert load_config(None, [f"train.lr={default_lr}"]).section_hash("train") == \
        base.section_hash("train")
    # Sections are named in the hash: the same values under another section name differ.
    assert base.section_hash("train") != base.section_hash("model")


def test_a_relative_storage_path_is_made_absolute_on_the_driver(tmp_path, monkeypatch):
    """Ray Train workers run in their own artifact folders: a relative path in the config
    they receive pointed into that folder (`pafo-ray run` with the default `pafo_runs`)."""
    from pafo_ray.stages.base import StageContext

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["run.storage_path=runs/here", "run.run_name=r"])
    ctx = StageContext.create(cfg)
    assert cfg.run.storage_path == str(tmp_path / "runs" / "here")
    assert ctx.run_dir.root == str(tmp_path / "runs" / "here" / "r")
