"""The student as an RLHF reward: a TRL ``reward_funcs`` callable (GRPO/RLOO signature).

    from trl import GRPOTrainer
    from pafo_ray.adapters import TRLReward
    reward = TRLReward("pafo_runs/demo/distill/student")   # or a RewardModel, s3://..., hub id
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], train_dataset=ds, ...)

(``pip install -e '.[trl]'``; tests/test_trl_grpo.py runs two real GRPOTrainer steps on CPU.)

TRL calls ``reward(prompts=..., completions=..., **columns)`` with the batch's other dataset
columns as keywords, so the user of each completion comes from the dataset's ``user_id`` column
(``user_column``). Prompts and completions may be plain strings or conversations (lists of
``{"role", "content"}`` messages); a conversation becomes its messages' contents joined by a
blank line (the student's ``model.template`` then joins prompt and response as in training).

Reward scale: the student's raw per-user rewards ``r(u, x, y)`` (default ``center=None``),
neither centred nor standardised. They are Bradley–Terry logits *for that user*: for one user
and prompt, ``r(y1) − r(y2)`` is the log-odds that the user prefers ``y1``. Levels are not
comparable across users or prompts (no per-user or per-prompt bias is learned — a constant
cancels in every margin — and a lowrank head's scale grows with ``|g + e_u|``), so compare
completions of one prompt for one user. GRPO does exactly that (its advantage subtracts each
prompt group's mean, and by default divides by its std). ``center="prompt"`` subtracts, per
user and prompt, the mean over that prompt's completions in the batch: for trainers that use
the reward level itself (RLOO's baseline is leave-one-out, so it does not need it; PPO-style
value learning does better on centred rewards).
Unknown users get the model's cold-start rule (``model.cold_start``). OpenRLHF's remote
reward model is the served app's ``POST /get_reward`` (pafo_ray.serve).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional, Sequence


def as_text(item: Any) -> str:
    """A string, or a conversation (list of messages) as its contents joined by blank lines."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and "content" in item:
        return str(item["content"])
    if isinstance(item, (list, tuple)):
        return "\n\n".join(as_text(m) for m in item)
    raise TypeError(f"expected a string or a list of chat messages, got {type(item).__name__}")


class TRLReward:
    """``reward(prompts, completions, **columns) -> list[float]`` for TRL's ``reward_funcs``."""

    def __init__(self, model, user_column: str = "user_id", center: Optional[str] = None,
                 batch_size: int = 64):
        from pafo_ray.models import RewardModel

        if center not in (None, "prompt"):
            raise ValueError(f"center must be None or 'prompt', got {center!r}")
        self.model = model if isinstance(model, RewardModel) else RewardModel.from_pretrained(model)
        self.model.eval()
        self.user_column = user_column
        self.center = center
        self.batch_size = batch_size
        self.__name__ = "pafo_reward"  # TRL logs each reward function under its __name__

    def __call__(self, prompts: Sequence, completions: Sequence, **columns) -> list:
        users = columns.get(self.user_column)
        if users is None:
            raise KeyError(f"the dataset has no {self.user_column!r} column: TRL passes the "
                           f"dataset's columns as keywords (got {sorted(columns)})")
        if not (len(users) == len(prompts) == len(completions)):
            raise ValueError(f"{len(prompts)} prompts, {len(completions)} completions, "
                             f"{len(users)} {self.user_column}")
        users = [str(u) for u in users]
        texts = [as_text(p) for p in prompts]
        rewards = self.model.score(users, texts, [as_text(c) for c in completions],
                                   batch_size=self.batch_size).astype(float)
        if self.center == "prompt":
            groups: dict = defaultdict(list)
            for i, key in enumerate(zip(users, texts)):
                groups[key].append(i)
            for rows in groups.values():
                rewards[rows] -= rewards[rows].mean()
        return rewards.tolist()
