"""The simulated user population shared by the synthetic generator and the converters.

A user of type t ∈ {majority, minority} has weights ``w_u = s_t ⊙ Dirichlet(c · p_t)`` over d
features, where the mode ``m_t`` gives ``p_t = |m_t| / Σ|m_t|`` and signs ``s_t = sign(m_t)``;
``round(minority_fraction · U)`` users, placed at random, are minority. A response with features
``f`` [d] has utility ``u = w_u · f`` (+ optional N(0, noise²) per rating). Each comparison is
rated by distinct users drawn uniformly (``raters_train`` in train, ``raters_eval`` in val/test;
splits by prompt); the label is the higher utility, or Bradley–Terry
``P(chosen = a) = σ(β (u_a − u_b))``. Every row carries the rater's ``user_type``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pafo_ray.data.schema import SPLITS

log = logging.getLogger(__name__)
USER_TYPES = ("majority", "minority")


@dataclass
class Population:
    """Users: ``weights`` [U, d] over ``feature_names``, ``is_minority`` [U] bool."""

    weights: np.ndarray
    is_minority: np.ndarray
    feature_names: tuple

    @property
    def user_ids(self) -> pa.Array:
        width = max(6, len(str(len(self.weights) - 1)))
        return pa.array([f"u{i:0{width}d}" for i in range(len(self.weights))], pa.string())

    def to_table(self) -> pa.Table:
        """user_id, user_type and one ``weight_<feature>`` column per feature (ground truth)."""
        columns = {"user_id": self.user_ids,
                   "user_type": pa.array(np.array(USER_TYPES)[self.is_minority.astype(int)])}
        for k, name in enumerate(self.feature_names):
            columns[f"weight_{name}"] = pa.array(self.weights[:, k])
        return pa.table(columns)


@dataclass
class Simulated:
    """A converter's output: the preference ``rows``, the ``users`` and what was skipped."""

    rows: pa.Table
    users: Population
    identical_pairs_skipped: int


def split_counts(num_prompts: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(validation prompts, test prompts): each fraction of ``num_prompts``, rounded half up."""
    return int(np.floor(num_prompts * val_fraction + 0.5)), int(np.floor(num_prompts * test_fraction + 0.5))


def check_population(num_users, minority_fraction, concentration, raters_train, raters_eval,
                     label_beta, val_fraction, test_fraction, prefix: str = "") -> None:
    """Raise ValueError naming the first setting the simulation cannot honour."""
    checks = [
        ("num_users", num_users, num_users >= max(raters_train, raters_eval, 1),
         "at least max(raters_train, raters_eval)"),
        ("minority_fraction", minority_fraction, 0.0 <= minority_fraction <= 1.0, "in [0, 1]"),
        ("dirichlet_concentration", concentration, concentration > 0, "> 0"),
        ("raters_train", raters_train, raters_train >= 1, ">= 1"),
        ("raters_eval", raters_eval, raters_eval >= 1, ">= 1"),
        ("label_beta", label_beta, label_beta is None or label_beta > 0, "None or > 0"),
        ("val_fraction", val_fraction, 0.0 <= val_fraction < 1.0, "in [0, 1)"),
        ("test_fraction", test_fraction, 0.0 <= test_fraction and val_fraction + test_fraction < 1.0,
         ">= 0 with val_fraction + test_fraction < 1"),
    ]
    for name, value, ok, expected in checks:
        if not ok:
            raise ValueError(f"{prefix}{name}={value!r}: expected {expected}")


def sample_population(num_users: int, minority_fraction: float, majority_mode, minority_mode,
                      concentration: float, rng, feature_names=None) -> Population:
    """Users around two signed modes (see the module docstring). weights: [U, d]."""
    majority_mode, minority_mode = np.asarray(majority_mode, float), np.asarray(minority_mode, float)
    is_minority = np.zeros(num_users, dtype=bool)
    is_minority[rng.permutation(num_users)[:int(np.floor(num_users * minority_fraction + 0.5))]] = True
    weights = []
    for mode in (majority_mode, minority_mode):
        alpha = concentration * np.abs(mode) / np.abs(mode).sum()
        weights.append(rng.dirichlet(alpha, size=num_users) * np.where(mode < 0, -1.0, 1.0))
    names = tuple(feature_names or (f"f{k}" for k in range(len(majority_mode))))
    return Population(np.where(is_minority[:, None], weights[1], weights[0]), is_minority, names)


def assign_splits(num_prompts: int, val_fraction: float, test_fraction: float, rng) -> np.ndarray:
    """Split code per prompt [num_prompts] int8 (0 train, 1 val, 2 test), exact counts."""
    n_val, n_test = split_counts(num_prompts, val_fraction, test_fraction)
    split = np.zeros(num_prompts, dtype=np.int8)
    order = rng.permutation(num_prompts)
    split[order[:n_val]] = 1
    split[order[n_val:n_val + n_test]] = 2
    return split


def sample_raters(num_comparisons: int, raters: int, num_users: int, rng) -> np.ndarray:
    """``raters`` distinct users per comparison, uniformly: [num_comparisons, raters] int64."""
    if raters * 4 > num_users:  # dense: the smallest of random keys, in bounded chunks
        out = np.empty((num_comparisons, raters), dtype=np.int64)
        step = max(1, 4_000_000 // num_users)
        for start in range(0, num_comparisons, step):
            keys = rng.random((min(step, num_comparisons - start), num_users))
            out[start:start + step] = np.argpartition(keys, raters - 1, axis=1)[:, :raters]
        return out
    out = rng.integers(0, num_users, size=(num_comparisons, raters))
    redo = np.arange(num_comparisons)
    while len(redo):  # resample the rows that drew a user twice (rare when raters² ≪ users)
        drawn = np.sort(out[redo], axis=1)
        redo = redo[(drawn[:, 1:] == drawn[:, :-1]).any(axis=1)]
        out[redo] = rng.integers(0, num_users, size=(len(redo), raters))
    return out


@dataclass
class Ratings:
    """One row per (comparison, rater), ordered by comparison: all [n_rows]."""

    comparison: np.ndarray
    user: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    utility_margin: np.ndarray


def rate_pairs(features: np.ndarray, weights: np.ndarray, item_a: np.ndarray, item_b: np.ndarray,
               raters_per_comparison: np.ndarray, label_beta, rng, utility_noise: float = 0.0) -> Ratings:
    """Rate comparisons (item_a[i], item_b[i]) [n_comp] of items with ``features`` [n_items, d].

    Utility ``u = weights[user] · features[item]``; chosen = argmax u (``label_beta`` None) or
    Bradley–Terry; ``utility_margin = u(chosen) − u(rejected)``.
    """
    comparisons, users = [], []
    for raters in np.unique(raters_per_comparison):
        rated = np.flatnonzero(raters_per_comparison == raters)
        users.append(sample_raters(len(rated), int(raters), len(weights), rng).ravel())
        comparisons.append(np.repeat(rated, raters))
    comparison, user = np.concatenate(comparisons), np.concatenate(users)
    order = np.argsort(comparison, kind="stable")
    comparison, user = comparison[order], user[order]
    a, b = item_a[comparison], item_b[comparison]
    utility_a = np.einsum("nd,nd->n", weights[user], features[a])
    utility_b = np.einsum("nd,nd->n", weights[user], features[b])
    if utility_noise:
        utility_a = utility_a + utility_noise * rng.standard_normal(len(a))
        utility_b = utility_b + utility_noise * rng.standard_normal(len(b))
    difference = utility_a - utility_b
    if label_beta is None:
        a_wins = difference > 0
    else:
        a_wins = rng.random(len(a)) < 1.0 / (1.0 + np.exp(-label_beta * difference))
    return Ratings(comparison, user, np.where(a_wins, a, b), np.where(a_wins, b, a),
                   np.where(a_wins, difference, -difference).astype(np.float64))


def preference_table(ratings: Ratings, prompts: pa.Array, items: pa.Array,
                     comparison_prompt: np.ndarray, comparison_split: np.ndarray,
                     population: Population, metadata: dict | None = None) -> pa.Table:
    """The rows as strings: user_id, prompt, chosen, rejected, split, user_type, utility_margin."""
    def take(array, index):
        return array.take(pa.array(np.asarray(index, dtype=np.int64)))

    table = pa.table({
        "user_id": take(population.user_ids, ratings.user),
        "prompt": take(prompts, comparison_prompt[ratings.comparison]),
        "chosen": take(items, ratings.chosen),
        "rejected": take(items, ratings.rejected),
        "split": take(pa.array(SPLITS, pa.string()), comparison_split[ratings.comparison]),
        "user_type": take(pa.array(USER_TYPES, pa.string()), population.is_minority[ratings.user]),
        "utility_margin": pa.array(ratings.utility_margin, pa.float64()),
    })
    return table.replace_schema_metadata(metadata) if metadata else table


def simulate_texts(prompts, texts, features, pairs_per_prompt, modes, names, *, num_users,
              minority_fraction, raters_train, raters_eval, label_beta, val_fraction, test_fraction,
              seed, dirichlet_concentration, utility_noise) -> Simulated:
    """Shared body of the converters. texts / features: [P·R] items, R per prompt, prompt-major."""
    check_population(num_users, minority_fraction, dirichlet_concentration, raters_train,
                     raters_eval, label_beta, val_fraction, test_fraction)
    if pairs_per_prompt is not None and pairs_per_prompt < 1:
        raise ValueError(f"pairs_per_prompt={pairs_per_prompt!r}: expected None or >= 1")
    rng = np.random.default_rng([seed, 0])
    population = sample_population(num_users, minority_fraction, *modes, dirichlet_concentration,
                                   rng, names)
    split = assign_splits(len(prompts), val_fraction, test_fraction, np.random.default_rng([seed, 2]))
    rng = np.random.default_rng([seed, 1])
    n_prompts, per_prompt = len(prompts), len(texts) // len(prompts)
    first, second = np.triu_indices(per_prompt, 1)
    if pairs_per_prompt is not None and pairs_per_prompt < len(first):
        picked = np.argsort(rng.random((n_prompts, len(first))), axis=1)[:, :pairs_per_prompt]
    else:
        picked = np.broadcast_to(np.arange(len(first)), (n_prompts, len(first)))
    base = (np.arange(n_prompts) * per_prompt)[:, None]
    item_a, item_b = (base + first[picked]).ravel(), (base + second[picked]).ravel()
    comparison_prompt = np.repeat(np.arange(n_prompts), picked.shape[1])
    text_array = np.asarray(texts, dtype=object)
    distinct = text_array[item_a] != text_array[item_b]
    skipped = int((~distinct).sum())
    if skipped:
        log.warning("%d of %d pairs have identical texts and were skipped", skipped, len(distinct))
    item_a, item_b, comparison_prompt = item_a[distinct], item_b[distinct], comparison_prompt[distinct]
    comparison_split = split[comparison_prompt]
    ratings = rate_pairs(features, population.weights, item_a, item_b,
                         np.where(comparison_split == 0, raters_train, raters_eval),
                         label_beta, rng, utility_noise)
    rows = preference_table(ratings, pa.array(prompts, pa.string()), pa.array(texts, pa.string()),
                            comparison_prompt, comparison_split, population,
                            {"pafo.identical_pairs_skipped": str(skipped)})
    return Simulated(rows, population, skipped)
