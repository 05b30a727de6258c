"""The TRL reward_funcs adapter on a tiny student: TRL's call signature, users from the dataset
column, conversations, prompt-centring. (A GRPOTrainer run is not part of this test.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pafo_ray.adapters import TRLReward, as_text
from pafo_ray.config import ModelConfig
from pafo_ray.models import RewardModel, build_tiny_backbone


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    backbone = build_tiny_backbone(tmp_path_factory.mktemp("bert"), vocab=["hello", "answer"])
    torch.manual_seed(0)
    model = RewardModel.from_config(ModelConfig(backbone=backbone, rank=4), ["a", "b"],
                                    input_dim=64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_trl_signature_users_from_the_column(student):
    reward = TRLReward(student)
    assert reward.__name__ == "pafo_reward"
    prompts = ["hello", "hello", "question"]
    completions = ["answer one", "short", "answer"]
    got = reward(prompts=prompts, completions=completions, user_id=["a", "b", "new"],
                 completion_ids=[[1], [2], [3]], trainer_state=None)
    np.testing.assert_allclose(got, student.score(["a", "b", "new"], prompts, completions),
                               rtol=1e-6)
    chat_p = [[{"role": "user", "content": p}] for p in prompts]
    chat_c = [[{"role": "assistant", "content": c}] for c in completions]
    np.testing.assert_allclose(reward(chat_p, chat_c, user_id=["a", "b", "new"]), got, rtol=1e-6)
    with pytest.raises(KeyError, match="user_id"):
        reward(prompts, completions, other=[1, 2, 3])
    with pytest.raises(ValueError, match="2 user_id"):
        reward(prompts, completions, user_id=["a", "b"])


def test_prompt_centring_per_user_and_prompt(student):
    reward = TRLReward(student, center="prompt")
    out = np.array(reward(["p", "p", "p", "q"], ["answer", "hello", "x", "y"],
                          user_id=["a", "a", "b", "a"]))
    assert abs(out[:2].sum()) < 1e-6 and out[2] == 0.0 and out[3] == 0.0
    assert as_text([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]) == "s\n\nu"
