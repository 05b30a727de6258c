"""The representation levers: layer pooling (model.pooling_layers / layer_combine) and
features learned from the training preferences (embed.adapt). Each test fails if its
option is ignored."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pafo_ray.config import ConfigError, load_config
from pafo_ray.models.adapter import Pairs, fit_adapter, training_pairs
from pafo_ray.models.backbone import TextEncoder, build_tiny_backbone, pool

PROMPTS = ["hello question", "a formal question?", "zebra", "hello"]
RESPONSES = ["short answer", "the world, formally.", "quixotic", "answer " * 10]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return build_tiny_backbone(tmp_path_factory.mktemp("bert"), arch="bert", num_layers=3)


def test_pooled_layers_equal_a_hand_computed_mean_of_hidden_states(tiny_bert):
    last = TextEncoder(tiny_bert)
    mixed = TextEncoder(tiny_bert, pooling_layers=[1, 2], layer_combine="mean")
    concat = TextEncoder(tiny_bert, pooling_layers=[0, 3], layer_combine="concat")
    assert mixed.hidden_size == 64 and concat.hidden_size == 128
    enc = last.tokenize(PROMPTS, RESPONSES)
    with torch.no_grad():
        states = last.model(**enc, output_hidden_states=True).hidden_states  # 4 x [B, T, 64]
    mask = enc["attention_mask"].unsqueeze(-1).float()

    def masked_mean(h):
        return (h * mask).sum(1) / mask.sum(1)

    by_hand = (masked_mean(states[1]) + masked_mean(states[2])) / 2
    got = torch.from_numpy(mixed.embed(PROMPTS, RESPONSES))
    torch.testing.assert_close(got, by_hand, rtol=1e-5, atol=1e-5)
    default = torch.from_numpy(last.embed(PROMPTS, RESPONSES))
    torch.testing.assert_close(default, pool(states[3], enc["attention_mask"], "mean"),
                               rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, default, atol=1e-3)  # the option changes the features
    both = torch.from_numpy(concat.embed(PROMPTS, RESPONSES))
    torch.testing.assert_close(both, torch.cat([masked_mean(states[0]), masked_mean(states[3])], 1),
                               rtol=1e-5, atol=1e-5)


def test_pooling_layers_out_of_range_names_the_key(tiny_bert):
    with pytest.raises(ValueError, match=r"model\.pooling_layers.*\[7\].*0 \(embeddings\) \.\. 3"):
        TextEncoder(tiny_bert, pooling_layers=[1, 7])


@pytest.mark.parametrize("override,key", [
    ("model.pooling_layers=[-1]", "model.pooling_layers"),
    ("model.pooling_layers=[1, 1]", "model.pooling_layers"),
    ("model.pooling_layers=['a']", "model.pooling_layers"),
    ("model.layer_combine=max", "model.layer_combine"),
    ("embed.adapt=lora", "embed.adapt"),
    ("embed.adapt_dim=0", "embed.adapt_dim"),
    ("embed.adapt_epochs=0", "embed.adapt_epochs"),
    ("embed.adapt_lr=0", "embed.adapt_lr"),
    ("embed.adapt_weight_decay=-1", "embed.adapt_weight_decay"),
    ("embed.adapt_holdout=1.0", "embed.adapt_holdout"),
])
def test_bad_lever_values_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_embed_hash_changes_with_every_lever():
    from pafo_ray.stages.embed import hash_payload

    base = hash_payload(load_config(None, []))
    for override in ("model.pooling_layers=[1,2]", "model.layer_combine=concat",
                     "embed.adapt=mlp"):
        assert hash_payload(load_config(None, [override])) != base, override
    adapted = hash_payload(load_config(None, ["embed.adapt=mlp"]))
    assert hash_payload(load_config(None, ["embed.adapt=mlp", "embed.adapt_dim=8"])) != adapted
    # adapter settings do not matter while the adapter is off
    assert hash_payload(load_config(None, ["embed.adapt_dim=8"])) == base


def _synthetic(n_items=120, n_users=40, n_pairs=1500, seed=0):
    """Utility = x0·x1 (a product: no linear function of x ranks the items), half the users
    with the opposite sign. Features x [n_items, 6]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_items, 6)).astype(np.float32)
    utility = x[:, 0] * x[:, 1]
    sign = np.where(np.arange(n_users) < n_users // 2, 1.0, -1.0)
    a, b = rng.integers(0, n_items, (2, n_pairs))
    user = rng.integers(0, n_users, n_pairs)
    a_wins = sign[user] * (utility[a] - utility[b]) > 0
    chosen, rejected = np.where(a_wins, a, b), np.where(a_wins, b, a)
    return x, Pairs(chosen, rejected, user, rng.integers(0, 30, n_pairs)), n_users


def _bt_train_accuracy(features, pairs, num_users, epochs=40):
    """Train accuracy of the personalized lowrank head on ``features`` (no adapter)."""
    from pafo_ray.losses import bradley_terry_loss
    from pafo_ray.models.heads import RewardHead

    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    torch.manual_seed(0)
    head = RewardHead(x.shape[1], num_users, head="lowrank", rank=4)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=0.0)
    c, r, u = (torch.from_numpy(np.asarray(v, dtype=np.int64))
               for v in (pairs.chosen, pairs.rejected, pairs.user))
    for _ in range(epochs):
        loss = bradley_terry_loss(head(x[c], u) - head(x[r], u)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((head(x[c], u) - head(x[r], u)) > 0).float().mean())


def test_adapted_features_fit_the_preferences_better_than_frozen_ones():
    x, pairs, users = _synthetic()
    result = fit_adapter(x, pairs, users, dim=16, rank=4, epochs=60, lr=1e-2,
                         weight_decay=0.0, holdout_fraction=0.2, seed=0)
    assert result.features.shape == (len(x), 16)
    frozen = _bt_train_accuracy(x, pairs, users)
    adapted = _bt_train_accuracy(result.features, pairs, users)
    assert adapted > frozen + 0.1, (adapted, frozen)
    assert result.holdout_accuracy > result.frozen_holdout_accuracy


def test_adapter_uses_training_rows_only():
    """Val/test rows are dropped by training_pairs, so flipping their labels changes nothing."""
    x, pairs, users = _synthetic(n_pairs=600)
    ids = np.arange(len(x), dtype=np.int64) * 7 + 3  # sorted text ids, not positions
    user_ids = [f"u{i:03d}" for i in range(users)]
    split = np.where(np.arange(len(pairs.chosen)) % 3 == 0, "val", "train")
    split[np.arange(len(split)) % 5 == 0] = "test"
    frame = pd.DataFrame({"split": split, "user_id": [user_ids[u] for u in pairs.user],
                          "prompt": [f"p{p}" for p in pairs.prompt],
                          "chosen_text_id": ids[pairs.chosen], "rejected_text_id": ids[pairs.rejected]})
    flipped = frame.copy()
    held = flipped["split"] != "train"
    flipped.loc[held, ["chosen_text_id", "rejected_text_id"]] = \
        flipped.loc[held, ["rejected_text_id", "chosen_text_id"]].to_numpy()
    first, second = training_pairs(frame, ids, user_ids), training_pairs(flipped, ids, user_ids)
    assert len(first.chosen) == int((split == "train").sum())
    np.testing.assert_array_equal(first.chosen, second.chosen)
    np.testing.assert_array_equal(first.chosen, pairs.chosen[split == "train"])
    a = fit_adapter(x, first, users, dim=8, rank=4, epochs=3, seed=0).features
    b = fit_adapter(x, second, users, dim=8, rank=4, epochs=3, seed=0).features
    np.testing.assert_array_equal(a, b)


def test_training_pairs_reject_texts_missing_from_the_cache():
    frame = pd.DataFrame({"split": ["train"], "user_id": ["u0"], "prompt": ["p"],
                          "chosen_text_id": [5], "rejected_text_id": [9]})
    with pytest.raises(ValueError, match="text id 9"):
        training_pairs(frame, np.array([1, 5, 8]), ["u0"])


def test_oracle_groups_are_the_true_types_and_need_them():
    from pafo_ray.stages.groups import oracle_groups

    users = pd.DataFrame({"user_id": ["a", "b", "c"], "support_group": ["minority", "majority",
                                                                         "majority"]})
    types = pd.Series({"a": "majority", "b": "minority", "c": "majority"})
    out = oracle_groups(users, types, ["minority", "majority"])
    assert out["group"].tolist() == ["majority", "minority", "majority"]
    with pytest.raises(ValueError, match="user_type"):
        oracle_groups(users, None, ["minority", "majority"])
    assert load_config(None, ["groups.method=oracle"]).groups.method == "oracle"


def test_embed_stage_adapts_the_cache_from_training_rows(tmp_path):
    """adapt_cache (the embed stage's step, no Ray): reads prepare's train partition only,
    writes one adapted vector per cached text to embed/cache."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pafo_ray.stages.base import StageContext
    from pafo_ray.stages.embed import adapt_cache
    from pafo_ray.train.arrays import read_cache

    x, pairs, users = _synthetic(n_pairs=400)
    ids = np.arange(len(x), dtype=np.int64) * 7 + 3
    cfg = load_config(None, [f"run.storage_path={tmp_path}", "run.run_name=r", "embed.adapt=mlp",
                             "embed.adapt_dim=8", "embed.adapt_epochs=2", "model.rank=4"])
    ctx = StageContext.create(cfg)
    root = tmp_path / "r"
    user_ids = [f"u{i:03d}" for i in range(users)]
    for split, rows in (("train", slice(0, 300)), ("val", slice(300, 400))):
        folder = root / "prepare" / "data" / f"split={split}" / "group=majority"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({
            "user_id": [user_ids[u] for u in pairs.user[rows]],
            "prompt": [f"p{p}" for p in pairs.prompt[rows]],
            "chosen_text_id": ids[pairs.chosen[rows]], "rejected_text_id": ids[pairs.rejected[rows]]}),
            folder / "part.parquet")
    pq.write_table(pa.table({"user_id": user_ids}), root / "prepare" / "users.parquet")
    (root / "embed" / "frozen_cache").mkdir(parents=True)
    flat = pa.array(x.reshape(-1))
    pq.write_table(pa.table({"text_id": ids,
                             "embedding": pa.FixedSizeListArray.from_arrays(flat, x.shape[1])}),
                   root / "embed" / "frozen_cache" / "part.parquet")
    summary = adapt_cache(ctx, str(root / "embed" / "frozen_cache"), str(root / "embed" / "cache"))
    cache = read_cache(str(root / "embed" / "cache"))
    assert cache.vectors.shape == (len(x), 8) and summary["dim"] == 8
    np.testing.assert_array_equal(cache.text_ids, ids)
    holdout = summary["train_rows"]
    assert 200 < holdout < 300  # training rows minus the held-out prompts; no val row counted
