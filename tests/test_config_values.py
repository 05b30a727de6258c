"""Config values as people type them: every YAML/Python number spelling, ranges and
relations checked at load time naming the key, and show-config with each key's help."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from pafo_ray.cli import main
from pafo_ray.config import ConfigError, PipelineConfig, config_from_dict, load_config
from pafo_ray.config_checks import LIST_RULES, RULES, lookup


@pytest.mark.parametrize("text, value", [
    ("1e-3", 1e-3), ("1E-3", 1e-3), (".5", 0.5), ("5e-1", 0.5), ("1.0e-3", 1e-3), ("2", 2.0),
    ("1_0e-3", 1e-2),
])
def test_float_spellings(text, value):
    cfg = load_config(None, [f"train.lr={text}"])
    assert cfg.train.lr == pytest.approx(value) and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize("text, value", [("1_000", 1000), ("1000", 1000), ("1e3", 1000),
                                         ("'64'", 64)])
def test_int_spellings(text, value):
    cfg = load_config(None, [f"data.generator.rows_per_file={text}"])
    assert cfg.data.generator.rows_per_file == value
    assert isinstance(cfg.data.generator.rows_per_file, int)


def test_a_yaml_list_of_numbers_is_numbers(tmp_path):
    cfg = load_config(None, ["train.weight_decay_grid=[1e-4, 1E-2, .5]"])
    assert cfg.train.weight_decay_grid == [1e-4, 1e-2, 0.5]
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  user_shrinkage_grid: [1e-3, 1e-1]\nprepare:\n  tau: [5e-1]\n")
    cfg = load_config(str(path))
    assert cfg.train.user_shrinkage_grid == [1e-3, 1e-1] and cfg.prepare.tau == [0.5]
    with pytest.raises(ConfigError, match=r"train\.weight_decay_grid\[1\]"):
        load_config(None, ["train.weight_decay_grid=[1e-4, lots]"])


@pytest.mark.parametrize("override, key", [
    ("train.epochs=-5", "train.epochs"),
    ("train.batch_size=-1", "train.batch_size"),
    ("embed.batch_size=0", "embed.batch_size"),
    ("prepare.val_fraction=1.5", "prepare.val_fraction"),
    ("prepare.min_raters=-1", "prepare.min_raters"),
    ("train.lr=nan", "train.lr"),
    ("train.lr=.nan", "train.lr"),
    ("train.lr=.inf", "train.lr"),
    ("train.lr=0", "train.lr"),
    ("prepare.num_partitions=-1", "prepare.num_partitions"),
    ("prepare.prior_a=0", "prepare.prior_a"),
    ("prepare.prior_b=-1", "prepare.prior_b"),
    ("data.generator.test_fraction=-0.1", "data.generator.test_fraction"),
    ("prepare.tau=[0.6, 0.3]", "prepare.tau"),
    ("prepare.user_quantile=[1.2]", "prepare.user_quantile"),
    ("model.dropout=1", "model.dropout"),
])
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert key in str(info.value)


def test_val_plus_test_must_leave_training_prompts():
    load_config(None, ["prepare.val_fraction=0.4", "prepare.test_fraction=0.5"])
    with pytest.raises(ConfigError, match=r"prepare\.val_fraction \+ prepare\.test_fraction"):
        load_config(None, ["prepare.val_fraction=0.5", "prepare.test_fraction=0.5"])
    with pytest.raises(ConfigError, match=r"data\.generator\.val_fraction \+"):
        load_config(None, ["data.generator.val_fraction=0.6", "data.generator.test_fraction=0.6"])


def test_a_dict_with_nan_is_refused_too():
    tree = PipelineConfig().to_dict()
    tree["distill"]["lam"] = float("nan")
    with pytest.raises(ConfigError, match=r"distill\.lam"):
        config_from_dict(tree)


def test_every_rule_names_a_real_key_and_the_defaults_pass():
    cfg = PipelineConfig()
    for key in list(RULES) + list(LIST_RULES):
        lookup(cfg, key)  # KeyError names a rule whose key was renamed
    assert config_from_dict(cfg.to_dict()) == cfg


def test_cli_exits_2_on_a_range_error(capsys):
    assert main(["prepare", "train.epochs=-5"]) == 2
    assert "train.epochs" in capsys.readouterr().err


def test_show_config_prints_each_keys_help(capsys):
    assert main(["show-config", "train.lr=1e-3"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert printed["train"]["lr"] == 1e-3 and printed == load_config(None, ["train.lr=1e-3"]).to_dict()
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("lr:"))
    assert lines[at - 1].strip() == "# AdamW learning rate."
    helps = [f.metadata["help"] for f in dataclasses.fields(PipelineConfig().train)]
    assert all(h.split()[0] in out for h in helps)


def test_teacher_init_must_name_a_teacher_set_that_will_be_trained():
    """Refused at load time, not after the teachers have trained."""
    with pytest.raises(ConfigError, match=r"distill.teacher_init: 'best' needs teachers.init=both"
                       r", got teachers.init='scratch'"):
        load_config(None, ["distill.teacher_init=best"])
    with pytest.raises(ConfigError, match=r"'vanilla' needs teachers.init=both \(or vanilla\)"):
        load_config(None, ["distill.teacher_init=vanilla"])
    assert load_config(None, ["teachers.init=both", "distill.teacher_init=best"])
    assert load_config(None, ["teachers.init=vanilla", "distill.teacher_init=vanilla"])
    assert load_config(None, ["distill.teacher_init=scratch"])  # the default teachers.init


def test_a_search_with_other_than_two_groups_is_refused_at_load():
    """The tune stage's objectives are the minority and majority groups' accuracy: with three
    groups it used to fail after the teachers had trained."""
    with pytest.raises(ConfigError, match=r"tune.num_samples: 8 trials .* need "
                       r"prepare.num_groups=2, got 3; set tune.num_samples=0"):
        load_config(None, ["prepare.num_groups=3", "prepare.user_quantile=[0.1, 0.3]",
                           "prepare.tau=[0.3, 0.6]"])
    cfg = load_config(None, ["prepare.num_groups=3", "prepare.user_quantile=[0.1, 0.3]",
                             "prepare.tau=[0.3, 0.6]", "tune.num_samples=0"])
    assert cfg.prepare.num_groups == 3
