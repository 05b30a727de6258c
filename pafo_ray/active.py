"""Active cold start: ask a new user the comparisons the groups disagree on most, one at a time,
then place the user and fit its offset (DESIGN §8; PAPA-style feedback efficiency).

    session = ActiveSession.from_texts(student, prompts, responses_a, responses_b)
    for _ in range(5):
        i = session.next()                      # the pool pair to show the user
        session.answer(i, prefers_a=...)        # what the user picked
    placed = session.add_user("new-user")       # the student now scores "new-user"

The pool is unordered pairs (``a``, ``b``) the user could be asked. After each answer the group
posterior (pafo_ray.coldstart.posterior) is updated; :meth:`ActiveSession.next` picks the pair,
not yet answered, on which the groups' win probabilities vary most under that posterior
(pafo_ray.coldstart.choose_next; the variance does not depend on which side is ``a``). The
placement, start and offset fit are those of ``place_user(place="group")`` on the answered
pairs, so a session and the passive rule agree on the same answers.

The default placement prior here is ``"flat"``: on builtin-80 (5 seeds, 625 held-out users,
5 answers, ``python -m benchmarks.coldstart --pool``) the active rule with the flat prior left a
type gap of +1.6 points [−1.1, +4.1] at −0.4 [−1.1, +0.3] to the majority against the mean-user
fallback; with the share prior the gap was +3.9 [+0.8, +6.7] (BENCHMARKS.md). The passive rule
(``fit_user``) keeps ``"share"``: there the flat prior cost the majority −1.5 [−2.4, −0.7].
"""

from __future__ import annotations

import numpy as np
import torch

from pafo_ray import coldstart as cs
from pafo_ray.coldstart import DEFAULT_SHRINKAGE, Placement

ACTIVE_PRIOR = "flat"  # measured best for the active rule (module doc)


class ActiveSession:
    """One new user's questions and answers over a pool of ``n`` pairs (``φ_a``, ``φ_b``)."""

    def __init__(self, model, phi_a, phi_b, *, prior: str = ACTIVE_PRIOR,
                 shrinkage: float = DEFAULT_SHRINKAGE):
        self.model, self.prior_kind, self.shrinkage = model, prior, shrinkage
        self.phi_a = torch.as_tensor(np.asarray(phi_a, dtype=np.float32))
        self.phi_b = torch.as_tensor(np.asarray(phi_b, dtype=np.float32))
        if self.phi_a.ndim != 2 or self.phi_a.shape != self.phi_b.shape:
            raise ValueError(f"the pool needs φ_a and φ_b of the same [n, D] shape, got "
                             f"{tuple(self.phi_a.shape)} and {tuple(self.phi_b.shape)}")
        self.names, vectors, shares = cs.group_vectors(model)
        self.prior = cs.placement_prior(shares, prior)
        self.margins = cs.group_margins(model, self.phi_a, self.phi_b, vectors)  # [n, G]: a over b
        self.asked: list[int] = []
        self.prefers_a: list[bool] = []

    @classmethod
    def from_texts(cls, model, prompts, responses_a, responses_b, **kwargs) -> ActiveSession:
        """A session over text pairs, embedded by the model's backbone."""
        if not (len(prompts) == len(responses_a) == len(responses_b)):
            raise ValueError(f"prompts, responses_a and responses_b differ in length: "
                             f"{len(prompts)}, {len(responses_a)}, {len(responses_b)}")
        return cls(model, model.embed_texts(prompts, responses_a).cpu(),
                   model.embed_texts(prompts, responses_b).cpu(), **kwargs)

    def __len__(self) -> int:
        return int(self.phi_a.shape[0])

    def _signs(self) -> torch.Tensor:
        return torch.tensor([1.0 if a else -1.0 for a in self.prefers_a], dtype=torch.float64)

    @property
    def posterior(self) -> dict:
        """``{group: probability}`` given the answers so far."""
        oriented = self.margins[self.asked] * self._signs()[:, None]
        return dict(zip(self.names, cs.posterior(oriented, self.prior).tolist()))

    def next(self) -> int | None:
        """The pool index to ask next, or None when every pair is answered."""
        if len(self.asked) >= len(self):
            return None
        post = torch.tensor(list(self.posterior.values()), dtype=torch.float64)
        return cs.choose_next(self.margins, post, set(self.asked))

    def answer(self, index: int, prefers_a: bool) -> None:
        """Record that the user preferred ``a`` (True) or ``b`` of pool pair ``index``."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) \
                or not 0 <= int(index) < len(self):
            raise ValueError(f"index must be a pool position 0..{len(self) - 1}, got {index!r}")
        if int(index) in self.asked:
            raise ValueError(f"pool pair {int(index)} is already answered")
        if not isinstance(prefers_a, (bool, np.bool_)):
            raise ValueError(f"prefers_a must be True or False, got {prefers_a!r}")
        self.asked.append(int(index))
        self.prefers_a.append(bool(prefers_a))

    def answered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(φ_chosen, φ_rejected)`` of the answers so far, in the order asked."""
        keep = torch.tensor(self.prefers_a, dtype=torch.bool)[:, None]
        a, b = self.phi_a[self.asked], self.phi_b[self.asked]
        return torch.where(keep, a, b), torch.where(keep, b, a)

    def place(self) -> Placement:
        """The user's group, start and fitted offset from the answers so far (model unchanged)."""
        chosen, rejected = self.answered()
        return cs.place_user(self.model, chosen, rejected, place="group",
                          shrinkage=self.shrinkage, prior=self.prior_kind)

    def add_user(self, user_id: str) -> Placement:
        """Place the user and add it to the model (``model.score(user_id, ...)`` then works)."""
        placed = self.place()
        self.model.add_user(user_id, placed.vector)
        self.model.user_groups[str(user_id)] = placed.group
        return placed
