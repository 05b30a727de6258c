"""The search-space YAML: the shipped file binds to the config; bad entries name their key."""

from __future__ import annotations

import dataclasses
import os

import pytest
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Quantized

from pafo_ray.config import DistillConfig, PipelineConfig, TrainConfig
from tuning.space import SEARCHABLE, apply_params, default_space_path, load_space, read_space


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_shipped_space_loads_and_binds_to_config_fields():
    path = default_space_path()
    assert os.path.isfile(path) and path.endswith("tuning/space.yaml")
    space = load_space()
    distill = {f.name for f in dataclasses.fields(DistillConfig)}
    train = {f.name for f in dataclasses.fields(TrainConfig)}
    assert space, "the shipped space is empty"
    for key in space:
        assert (key in distill or key in {"lr", "weight_decay"} and key in train
                or key == "user_shrinkage"), key
    # The levers DESIGN §6 asks to search are all in it.
    assert {"lam", "minority_weight", "margin_norm", "scope", "teacher_init",
            "extra_pairs", "extra_users"} <= set(space)
    # Regularisation (lr, user_shrinkage, weight_decay) is shared with vanilla: not searched.
    assert not {"lr", "user_shrinkage", "weight_decay"} & set(space)
    # Every sampled value binds to the config through apply_params.
    sample = {key: (dom.categories[-1] if isinstance(dom, Categorical) else dom.lower)
              for key, dom in space.items()}
    config = apply_params(PipelineConfig(), sample)
    for key, value in sample.items():
        assert getattr(getattr(config, SEARCHABLE[key][0]), key) == value


def test_shipped_space_bounds():
    space = load_space()
    lam = space["lam"]
    assert isinstance(lam, Float) and isinstance(lam.get_sampler(), LogUniform)
    assert (lam.lower, lam.upper) == (0.05, 10.0)
    extra = space["extra_pairs"]  # qrandint: 0..40 in steps of 10, both bounds included
    assert (extra.lower, extra.upper, extra.get_sampler().q) == (0, 40, 10)
    clip = space["clip"]
    assert isinstance(clip, Float) and not isinstance(clip.get_sampler(), LogUniform)
    assert (clip.lower, clip.upper) == (2.0, 20.0)
    assert space["scope"].categories == ["all", "agree", "minority_users"]


def test_every_type_becomes_the_right_domain(tmp_path):
    path = write(tmp_path, """
lam: {type: uniform, low: 0.5, high: 2}
lr: {type: loguniform, low: 1e-4, high: 1e-2}   # 1e-4 is text to YAML; still a number here
loss: {type: choice, values: [kl]}
scope: {type: fixed, value: minority_users}
clip: null
""")
    space = load_space(path)
    assert (space["lam"].lower, space["lam"].upper) == (0.5, 2.0)
    assert (space["lr"].lower, space["lr"].upper) == (1e-4, 1e-2)
    assert space["loss"].categories == ["kl"]
    assert space["scope"] == "minority_users"  # a fixed value is a plain constant
    assert space["clip"] is None  # a bare value fixes the key (clip=None: no clip)


def test_int_ranges_include_both_bounds(tmp_path):
    # No DistillConfig field is an int today; check the mapping on the normalised entries
    # through a float field, which accepts whole numbers.
    space = load_space(write(tmp_path, "clip: {type: int, low: 2, high: 8}\n"
                                       "lam: {type: int, low: 2, high: 8, step: 2}\n"
                                       "temperature: {type: int, low: 1, high: 16, log: true}\n"))
    clip, lam, temperature = space["clip"], space["lam"], space["temperature"]
    assert isinstance(clip, Integer) and (clip.lower, clip.upper) == (2, 9)  # randint: upper excl.
    assert isinstance(lam.get_sampler(), Quantized) and (lam.lower, lam.upper) == (2, 8)
    assert isinstance(temperature.get_sampler(), LogUniform) and temperature.upper == 17


def test_overrides_replace_or_fix_entries():
    space = load_space(overrides={"lam": {"type": "uniform", "low": 0.1, "high": 0.2},
                                  "loss": "kl", "weight_decay": 1e-3})
    assert (space["lam"].lower, space["lam"].upper) == (0.1, 0.2)
    assert space["loss"] == "kl" and space["weight_decay"] == 1e-3
    assert isinstance(space["scope"], Categorical)  # untouched entries stay
    with pytest.raises(ValueError, match="override.*'bogus'"):
        load_space(overrides={"bogus": 1.0})


@pytest.mark.parametrize("text, key, fragment", [
    ("foo: {type: uniform, low: 0, high: 1}", "foo", "unknown search key"),
    ("use_tuned: {type: choice, values: [true]}", "use_tuned", "unknown search key"),
    ("epochs: {type: int, low: 1, high: 5}", "epochs", "unknown search key"),
    ("lam: {type: uniform, low: 2, high: 1}", "lam", "must be below high"),
    ("lam: {type: uniform, low: 1, high: 1}", "lam", "must be below high"),
    ("lam: {type: loguniform, low: 0, high: 1}", "lam", "low > 0"),
    ("lam: {type: loguniform, low: -1, high: 1}", "lam", "low > 0"),
    ("lam: {type: gaussian, low: 0, high: 1}", "lam", "unknown type"),
    ("lam: {low: 0, high: 1}", "lam", "unknown type"),
    ("lam: {type: uniform, low: 0}", "lam", "needs \\['high'\\]"),
    ("lam: {type: uniform, low: 0, high: 1, lo: 3}", "lam", "not \\['lo'\\]"),
    ("lam: {type: uniform, low: zero, high: 1}", "lam", "low must be a number"),
    ("lam: {type: int, low: 1.5, high: 4}", "lam", "whole-number"),
    ("lam: {type: int, low: 0, high: 4, log: true}", "lam", "log int"),
    ("loss: {type: choice, values: [mse, huber]}", "loss", "huber"),
    ("loss: {type: choice, values: []}", "loss", "non-empty"),
    ("loss: {type: uniform, low: 0, high: 1}", "loss", "numeric field"),
    ("scope: {type: fixed, value: everyone}", "scope", "everyone"),
    ("margin_norm: {type: fixed}", "margin_norm", "needs \\['value'\\]"),
])
def test_bad_entries_name_the_key_and_file(tmp_path, text, key, fragment):
    path = write(tmp_path, text + "\n")
    with pytest.raises(ValueError, match=fragment) as info:
        load_space(path)
    assert key in str(info.value) and path in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_space(str(tmp_path / "nope.yaml"))
    with pytest.raises(ValueError, match="expected a mapping"):
        read_space(write(tmp_path, "- lam\n- lr\n"))
    with pytest.raises(ValueError, match="not valid YAML"):
        read_space(write(tmp_path, "lam: {type: [\n"))
    assert read_space(write(tmp_path, "")) == {}


def test_apply_params_writes_sections_and_checks_values():
    config = apply_params(PipelineConfig(), {"lam": 0.3, "lr": 0.02, "scope": "agree",
                                             "trial_note": "ignored"})
    assert config.distill.lam == 0.3 and config.distill.scope == "agree"
    assert config.train.lr == 0.02
    assert config.distill.minority_weight == DistillConfig().minority_weight  # untouched
    assert PipelineConfig().distill.lam == 1.0  # the input is not modified
    with pytest.raises(ValueError, match="loss"):
        apply_params(PipelineConfig(), {"loss": "huber"})
