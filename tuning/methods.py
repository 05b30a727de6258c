"""Several independent searches in ONE Ray Tune experiment.

The tune stage searches the student's weights and, with ``tune.tune_baselines``, each
baseline's own setting, with the same budget, sampler and seed. Run as one experiment a
method, each paid a Tuner start-up and a round of trial-actor start-ups (on the 2-core demo:
4 searches of ~7 s, 1–4 s of which were training). :class:`MethodSearches` is one ``Searcher``
that holds one ``OptunaSearch`` a method — its own space, sampler and budget, told only its
own trials' results, so each search samples exactly as it would alone given the same order of
results — and hands the trials out in turn as ``{METHOD_KEY: method, **params}``; the trial
function reads the method from its config. Trial actors are reused across methods.
"""

from __future__ import annotations

import pickle
from typing import Optional

from ray.tune.search import Searcher
from ray.tune.search.sample import Domain

# The config key that tells a trial which search (method) it belongs to.
METHOD_KEY = "method"


def split_space(param_space: dict) -> tuple:
    """``(sampled, constants)`` of a Tune param space: Tune domains, and fixed values."""
    sampled = {k: v for k, v in param_space.items() if isinstance(v, Domain)}
    return sampled, {k: v for k, v in param_space.items() if k not in sampled}


class MethodSearches(Searcher):
    """``searches`` = ``{method: (searcher or None, constants)}``, ``budget`` trials each.

    A method whose space holds only fixed values has no searcher: its trials train the
    constants. Trials go round-robin over the methods that have budget left; when every
    method has had its budget, :data:`Searcher.FINISHED`.
    """

    def __init__(self, searches: dict, budget: int, metric: Optional[list] = None,
                 mode: Optional[list] = None):
        super().__init__(metric=metric, mode=mode)
        if budget < 1:
            raise ValueError(f"each search needs a budget of at least 1 trial, got {budget}")
        self.searches = dict(searches)
        self.budget = budget
        self.handed = {method: 0 for method in self.searches}
        self.method_of: dict = {}
        self.turn = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return not config  # the spaces are the searches' own; the Tuner gets none

    def suggest(self, trial_id: str):
        order = list(self.searches)
        for _ in order:
            method = order[self.turn % len(order)]
            self.turn += 1
            if self.handed[method] >= self.budget:
                continue
            searcher, constants = self.searches[method]
            params = searcher.suggest(trial_id) if searcher is not None else {}
            if params is None or params == Searcher.FINISHED:
                continue
            self.handed[method] += 1
            self.method_of[trial_id] = method
            return {METHOD_KEY: method, **constants, **params}
        done = all(count >= self.budget for count in self.handed.values())
        return Searcher.FINISHED if done else None

    def _searcher(self, trial_id: str):
        method = self.method_of.get(trial_id)
        return None if method is None else self.searches[method][0]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        searcher = self._searcher(trial_id)
        if searcher is not None:
            searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None,
                          error: bool = False) -> None:
        searcher = self._searcher(trial_id)
        if searcher is not None:
            searcher.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__.copy(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))
