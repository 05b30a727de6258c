"""embed.tune_layers: the backbone's top layers fitted on the training preferences. Each test
fails if the option is ignored or its cached-activation shortcut drifts from the real model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pafo_ray.config import ConfigError, load_config
from pafo_ray.models.adapter import Pairs
from pafo_ray.models.backbone import TextEncoder, build_tiny_backbone
from pafo_ray.models.toplayers import _Cached, tune_top_layers

WORDS = ["sun", "rain", "calm", "storm", "tea", "coffee"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return build_tiny_backbone(tmp_path_factory.mktemp("bert"), arch="bert", num_layers=3,
                               vocab=WORDS + ["first", "then", "q"])


def planted(num_prompts: int = 40, users: int = 12, seed: int = 0):
    """Prompts with two responses that hold the same words in opposite order; half the users
    prefer 'first sun then rain' style order A, the others order B. Only word ORDER tells the
    two responses apart, so mean pooling of untuned features can barely read it."""
    rng = np.random.default_rng(seed)
    prompts, responses, chosen, rejected, user, prompt = [], [], [], [], [], []
    for p in range(num_prompts):
        a, b = rng.choice(WORDS, 2, replace=False)
        base = len(responses)
        prompts += ["q"] * 2
        responses += [f"first {a} then {b}", f"first {b} then {a}"]
        for u in range(users):
            likes_first = (u % 2 == 0) == (WORDS.index(a) < WORDS.index(b))
            chosen.append(base if likes_first else base + 1)
            rejected.append(base + 1 if likes_first else base)
            user.append(u)
            prompt.append(p)
    pairs = Pairs(np.array(chosen), np.array(rejected), np.array(user), np.array(prompt))
    return prompts, responses, pairs, users


def test_cached_activations_give_the_backbones_own_features(tiny_bert):
    for layers, combine in (([], "mean"), ([1, 3], "mean"), ([2, 3], "concat")):
        encoder = TextEncoder(tiny_bert, pooling_layers=layers, layer_combine=combine)
        prompts, responses, _, _ = planted(6)
        ids, _ = encoder.token_ids(prompts, responses)
        cached = _Cached(encoder, ids, low=1)
        with torch.no_grad():
            shortcut = cached.features(np.arange(len(ids))).numpy()
        torch.testing.assert_close(torch.from_numpy(shortcut),
                                   torch.from_numpy(encoder.embed(prompts, responses)),
                                   rtol=1e-3, atol=1e-3)


def test_tuned_layers_learn_what_the_untuned_features_miss_and_embed_agrees(tiny_bert):
    encoder = TextEncoder(tiny_bert)
    prompts, responses, pairs, users = planted()
    before = encoder.embed(prompts, responses)
    lower = {k: v.clone() for k, v in encoder.model.encoder.layer[0].state_dict().items()}
    ids, _ = encoder.token_ids(prompts, responses)
    result = tune_top_layers(encoder, ids, pairs, users, layers=2, epochs=12, lr=3e-3,
                             holdout_fraction=0.25, prompts_per_step=4, seed=0)
    assert result.epoch >= 1 and result.layers == 2 and len(result.epoch_seconds) == 12
    assert result.holdout_accuracy > result.frozen_holdout_accuracy + 0.1, result
    after = encoder.embed(prompts, responses)
    assert np.abs(after - before).max() > 1e-2  # the option changed the features
    for k, v in encoder.model.encoder.layer[0].state_dict().items():  # below: untouched
        torch.testing.assert_close(v, lower[k])
    with torch.no_grad():  # the shortcut and the saved model agree after tuning too
        shortcut = _Cached(encoder, ids, low=1).features(np.arange(len(ids))).numpy()
    np.testing.assert_allclose(shortcut, after, rtol=1e-3, atol=1e-3)


def test_no_better_epoch_keeps_the_untuned_layers(tiny_bert):
    encoder = TextEncoder(tiny_bert)
    prompts, responses, pairs, users = planted(20)
    before = encoder.embed(prompts, responses)
    ids, _ = encoder.token_ids(prompts, responses)
    # A vanishing lr for the layers: the tuning head never beats the head fitted on the
    # untuned features (30 epochs), so epoch 0 is kept and the weights are the original ones.
    result = tune_top_layers(encoder, ids, pairs, users, layers=1, epochs=2, lr=1e-12,
                             holdout_fraction=0.25, seed=0)
    assert result.epoch == 0, result
    assert result.holdout_accuracy == result.frozen_holdout_accuracy
    np.testing.assert_array_equal(encoder.embed(prompts, responses), before)


@pytest.mark.parametrize("kwargs,match", [
    ({"layers": 4}, r"embed\.tune_layers=4: .* has 3 transformer layers"),
    ({"layers": 0}, r"embed\.tune_layers=0"),
])
def test_layers_out_of_range_name_the_key(tiny_bert, kwargs, match):
    encoder = TextEncoder(tiny_bert)
    prompts, responses, pairs, users = planted(4)
    ids, _ = encoder.token_ids(prompts, responses)
    with pytest.raises(ValueError, match=match):
        tune_top_layers(encoder, ids, pairs, users, **kwargs)


def test_pooling_none_of_the_tuned_layers_is_an_error(tiny_bert):
    encoder = TextEncoder(tiny_bert, pooling_layers=[1])
    prompts, responses, pairs, users = planted(4)
    ids, _ = encoder.token_ids(prompts, responses)
    with pytest.raises(ValueError, match=r"trains layers 3\.\.3, but model\.pooling_layers=\[1\]"):
        tune_top_layers(encoder, ids, pairs, users, layers=1)


def test_a_decoder_backbone_is_refused_by_name(tmp_path):
    gpt2 = build_tiny_backbone(tmp_path / "gpt2", arch="gpt2")
    encoder = TextEncoder(gpt2)
    with pytest.raises(ValueError, match=r"embed\.tune_layers supports encoder backbones.*GPT2Model"):
        tune_top_layers(encoder, [[1, 2]], Pairs(*(np.zeros(1, dtype=int),) * 4), 1, layers=1)


@pytest.mark.parametrize("override,key", [
    ("embed.tune_layers=-1", "embed.tune_layers"),
    ("embed.tune_epochs=0", "embed.tune_epochs"),
    ("embed.tune_lr=0", "embed.tune_lr"),
    ("embed.tune_prompts_per_step=0", "embed.tune_prompts_per_step"),
    ("embed.tune_max_texts=1", "embed.tune_max_texts"),
])
def test_bad_values_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_tuning_with_finetune_mode_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"embed\.tune_layers: 2 is for model\.mode=frozen"):
        load_config(None, ["embed.tune_layers=2", "model.mode=finetune"])


def test_embed_hash_follows_the_tuning_settings():
    from pafo_ray.stages.embed import hash_payload

    base = hash_payload(load_config(None, []))
    tuned = hash_payload(load_config(None, ["embed.tune_layers=2"]))
    assert tuned != base
    assert hash_payload(load_config(None, ["embed.tune_layers=2", "embed.tune_lr=1e-3"])) != tuned
    # off: its settings do not touch the cache
    assert hash_payload(load_config(None, ["embed.tune_lr=1e-3"])) == base
