"""Two real steps of TRL's GRPOTrainer on CPU with the saved student as its reward function.

The policy is a tiny GPT-2 built from config with a tokenizer written offline (nothing is
downloaded); the reward is ``pafo_ray.adapters.TRLReward`` over a saved tiny student, the
user of each completion coming from the dataset's ``user_id`` column. Checks that the rewards
TRL logged are the student's own rewards for (that user, that prompt, that completion).
Needs the optional extra ``trl`` (``pip install -e '.[trl]'``; the dev extra installs it too).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed: pip install -e '.[trl]'")

from pafo_ray.adapters import TRLReward  # noqa: E402
from pafo_ray.config import ModelConfig  # noqa: E402
from pafo_ray.models import RewardModel, build_tiny_backbone  # noqa: E402

WORDS = ["hello", "world", "answer", "question", "short", "formal", "poem", "song", "fun"]
USERS = ["alice", "bob"]


class Spy:
    """Records the user ids TRL passed with each call (TRL logs prompts and completions only)."""

    def __init__(self, reward: TRLReward):
        self.reward = reward
        self.__name__ = reward.__name__
        self.calls: list = []

    def __call__(self, prompts, completions, **columns):
        out = self.reward(prompts, completions, **columns)
        self.calls.append((list(columns["user_id"]), list(prompts), list(completions), out))
        return out


@pytest.mark.slow
def test_grpo_two_steps_logs_the_students_rewards(tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    # The student: a tiny frozen-mode model, saved with its backbone, loaded back by TRLReward.
    bert = build_tiny_backbone(tmp_path / "bert", vocab=WORDS)
    torch.manual_seed(0)
    student = RewardModel.from_config(ModelConfig(backbone=bert, rank=4), USERS, input_dim=64)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
        student.head.user_embedding.weight[1] = -student.head.user_embedding.weight[0]
    student.save_pretrained(tmp_path / "student", include_backbone=True)
    reward = Spy(TRLReward(str(tmp_path / "student")))

    # The policy: a tiny GPT-2 LM from config; its tokenizer built offline.
    tokenizer = AutoTokenizer.from_pretrained(
        build_tiny_backbone(tmp_path / "gpt2", arch="gpt2", vocab=WORDS))
    torch.manual_seed(1)
    policy = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    prompts = ["hello question", "formal poem", "short song", "fun world"]
    dataset = Dataset.from_dict({"prompt": prompts * 2,
                                 "user_id": [USERS[i % 2] for i in range(8)]})
    args = trl.GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=2, use_cpu=True,
                          per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=6, logging_steps=1, report_to="none",
                          save_strategy="no", seed=0, bf16=False, learning_rate=1e-3,
                          disable_tqdm=True)
    trainer = trl.GRPOTrainer(model=policy, reward_funcs=[reward], args=args,
                              train_dataset=dataset, processing_class=tokenizer)
    trainer.train()

    assert len(reward.calls) == 2, "one reward call per step (one generation per step)"
    logged = [h for h in trainer.state.log_history if "rewards/pafo_reward/mean" in h]
    assert len(logged) == 2
    for (users, ps, cs, out), history in zip(reward.calls, logged):
        assert set(users) <= set(USERS) and len(users) == 4
        direct = student.score(users, ps, cs)  # the student scored directly, no TRL in between
        np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-6)
        assert all(math.isfinite(v) for v in out)
        assert math.isclose(history["rewards/pafo_reward/mean"], float(np.mean(direct)),
                            rel_tol=1e-4, abs_tol=1e-5)
    # The last generation's per-completion rewards as TRL keeps them for its completion table.
    users, ps, cs, out = reward.calls[-1]
    assert list(trainer._logs["completion"]) == cs
    np.testing.assert_allclose(list(trainer._logs["rewards"]["pafo_reward"]), out, rtol=1e-5)
    everything = np.concatenate([np.asarray(c[3]) for c in reward.calls])
    assert everything.std() > 1e-4, "rewards are constant: the student is not being used"
    # The user matters: the same texts scored for the other user differ.
    other = [USERS[1 - USERS.index(u)] for u in users]
    assert not np.allclose(student.score(other, ps, cs), out)
