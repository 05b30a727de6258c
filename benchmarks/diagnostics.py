"""Per-run diagnostics of the quality suite: which lever limits a run.

- ``ceiling``: accuracy on test of the simulator's own utilities, by true user type — the
  user's true weights (100% with deterministic labels), the user's *type* mean weights (a
  model that knew each user's type and the exact features) and one population utility (a
  perfect non-personalised model). DSP only: its features are known (one-hot domain).
- ``probe``: how much of the simulator's latent attribute (the DSP domain that wrote a
  response) the cached features carry: 5-way logistic regression on query-centred features,
  5-fold split by query, chance 20% — for the backbone's vectors and, with ``embed.adapt``,
  for the adapted ones; beside it the 2-way *type-axis* probe (the domains the minority type
  weighs more against those it weighs less, chance 50%), and both probes on a lexical
  baseline (character n-gram TF-IDF of the responses): the features' share of the problem.
- ``teachers``: each teacher's validation accuracy on its own group beside vanilla's on that
  group (DESIGN §6: distillation helps only where a teacher beats vanilla there), and the
  seconds each model's fit took.
- ``grouping``: how pure the lowest group could be. One assignment round of the mixture
  (:func:`pafo_ray.grouping.mixture_groups`) with the population vectors fitted on the
  simulator's *true* user types and the groups kept at their true sizes: each user still goes
  where its own ~10 training rows point, so this is the purity the run's grouping model could
  reach with the populations known exactly — beside the run's own purity and recall.
- ``placement``: DSP only: the same purity with the simulator's *true* features (one-hot
  domains) and type priors — Bayes placement of each user by its own training rows: how pure
  the groups could be at this many rows a user if the features knew the domains.
- ``cost``: seconds of the embed stage's forward pass, the top-layer tuning
  (``embed.tune_layers``) and the adapter fit.
Diagnostics only: nothing here feeds a choice of the pipeline.
"""

from __future__ import annotations

import numpy as np


def _frame(run_dir, *parts, columns=None):
    from pafo_ray.train.inmemory import read_frame

    return read_frame(run_dir.uri(*parts), columns)


def dsp_domains(path) -> dict:
    """``{(query, response): domain index}`` from the DSP file (DSP_DOMAINS order)."""
    from pafo_ray.data.convert import DSP_DOMAINS, read_dsp

    queries, responses = read_dsp(path)
    k = len(DSP_DOMAINS)
    return {(q, responses[i * k + d]): d for i, q in enumerate(queries) for d in range(k)}


def _simulated(cfg, split: str):
    """The run's simulated DSP rows of ``split`` (as the input stage simulates them), pandas."""
    from pafo_ray.data.convert import simulate_dsp

    data = cfg.data
    sim = simulate_dsp(data.path, num_users=data.sim_num_users,
                       minority_fraction=data.sim_minority_fraction,
                       raters_train=data.sim_raters_train, raters_eval=data.sim_raters_eval,
                       label_beta=data.sim_label_beta, max_prompts=data.sim_max_prompts,
                       seed=cfg.run.seed)
    rows = sim.rows.to_pandas()
    return rows[rows["split"] == split]


def dsp_ceiling(cfg) -> dict:
    """Test accuracy by true type of the true, the type-mean and the population utilities."""
    from pafo_ray.data.convert import DSP_MAJORITY_MODE, DSP_MINORITY_MODE

    data = cfg.data
    rows = _simulated(cfg, "test")
    domain = dsp_domains(data.path)
    k = len(DSP_MAJORITY_MODE)

    def onehot(column):
        index = np.array([domain[(q, r)] for q, r in zip(rows["prompt"], rows[column])])
        return np.eye(k)[index]

    diff = onehot("chosen") - onehot("rejected")  # [n, 5]
    minority = (rows["user_type"] == "minority").to_numpy()
    modes = {"majority": DSP_MAJORITY_MODE / np.abs(DSP_MAJORITY_MODE).sum(),
             "minority": DSP_MINORITY_MODE / np.abs(DSP_MINORITY_MODE).sum()}
    type_weights = np.where(minority[:, None], modes["minority"], modes["majority"])
    share = data.sim_minority_fraction
    population = (1 - share) * modes["majority"] + share * modes["minority"]
    out = {}
    for name, margin in (("user", rows["utility_margin"].to_numpy()),
                         ("type", np.einsum("nd,nd->n", diff, type_weights)),
                         ("population", diff @ population)):
        correct = margin > 0
        out[name] = {"majority": float(correct[~minority].mean()),
                     "minority": float(correct[minority].mean())}
    return out


def probe(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int = 5) -> float:
    """Mean 5-fold (split by ``groups``) accuracy of a logistic regression of ``labels`` on
    ``features`` centred within each group (a query): chance = 1 / classes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = features.astype(np.float64).copy()
    for g in np.unique(groups):
        at = groups == g
        x[at] -= x[at].mean(0)
    scores = []
    for train, test in GroupKFold(n_splits=folds).split(x, labels, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        model.fit(x[train], labels[train])
        scores.append(model.score(x[test], labels[test]))
    return float(np.mean(scores))


def placement_ceiling(chosen: np.ndarray, rejected: np.ndarray, user: np.ndarray,
                      is_minority: dict, modes: tuple, concentration: float, label_beta=None,
                      samples: int = 4000, seed: int = 0) -> dict:
    """How pure the lowest group could be if each user were placed by its own training rows
    *with the simulator's true features*: Bayes placement. ``chosen`` / ``rejected`` [n] are
    the rows' one-hot feature indices (the DSP domain), ``user`` [n] their users. Each type's
    likelihood of a user's answers is averaged over ``samples`` weight vectors drawn from the
    type's Dirichlet (``concentration`` × the normalised ``modes`` = (majority, minority)):
    the share of them that agree with every answer (deterministic labels) or the mean of
    ``Π σ(β·Δu)`` (``label_beta``). The users with the highest minority-vs-majority
    log-likelihood ratio, as many as there are minority-type users, form the group."""
    rng = np.random.default_rng(seed)
    draws = [rng.dirichlet(concentration * np.abs(m) / np.abs(m).sum(), size=samples)
             for m in modes]
    order = np.argsort(user, kind="stable")
    users, starts = np.unique(user[order], return_index=True)
    ratio = {}
    for u, rows in zip(users, np.split(order, starts[1:])):
        logs = []
        for w in draws:
            diff = w[:, chosen[rows]] - w[:, rejected[rows]]  # [samples, rows]
            if label_beta is None:
                logs.append(np.log(np.mean(np.all(diff > 0, axis=1)) + 1e-12))
            else:
                log_lik = -np.logaddexp(0.0, -label_beta * diff).sum(axis=1)
                logs.append(np.logaddexp.reduce(log_lik) - np.log(samples))
        ratio[u] = logs[1] - logs[0]
    size = int(sum(bool(is_minority[u]) for u in users))
    top = sorted(users, key=lambda u: (-ratio[u], str(u)))[:size]
    return {"purity": float(np.mean([bool(is_minority[u]) for u in top])) if size else float("nan"),
            "minority_type_users": size, "rows_per_user": round(len(user) / max(1, len(users)), 1)}


def dsp_placement_ceiling(cfg, samples: int = 4000) -> dict:
    """:func:`placement_ceiling` on the run's simulated DSP training rows."""
    import inspect

    from pafo_ray.data.convert import DSP_MAJORITY_MODE, DSP_MINORITY_MODE, simulate_dsp

    data = cfg.data
    rows = _simulated(cfg, "train")
    concentration = inspect.signature(simulate_dsp).parameters["dirichlet_concentration"].default
    domain = dsp_domains(data.path)
    chosen = np.array([domain[(q, r)] for q, r in zip(rows["prompt"], rows["chosen"])])
    rejected = np.array([domain[(q, r)] for q, r in zip(rows["prompt"], rows["rejected"])])
    kinds = rows.groupby("user_id")["user_type"].first()
    return placement_ceiling(chosen, rejected, rows["user_id"].astype(str).to_numpy(),
                             {str(u): t == "minority" for u, t in kinds.items()},
                             (DSP_MAJORITY_MODE, DSP_MINORITY_MODE), concentration,
                             data.sim_label_beta, samples=samples, seed=cfg.run.seed)


def type_axis(labels: np.ndarray) -> np.ndarray:
    """Per text, the side of the axis that separates the two simulated types: 1 for a domain
    the minority type weighs more than the majority (entertainment, literature), 0 for one it
    weighs less (academy, business), -1 for one both weigh alike (normal)."""
    from pafo_ray.data.convert import DSP_MAJORITY_MODE, DSP_MINORITY_MODE

    side = np.sign(DSP_MINORITY_MODE - DSP_MAJORITY_MODE)
    return np.where(side > 0, 1, np.where(side < 0, 0, -1))[labels]


def probes(features: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> dict:
    """The 5-way domain probe and the 2-way type-axis probe (texts off the axis left out;
    chance 50%) of one feature set."""
    axis = type_axis(labels)
    on = axis >= 0
    return {"accuracy": probe(features, labels, queries),
            "type_axis": probe(features[on], axis[on], queries[on])}


def lexical_features(responses: list, dim: int = 128, seed: int = 0) -> np.ndarray:
    """A lexical baseline for the probe: character 3-5-gram TF-IDF of the responses (sublinear
    term frequency, n-grams in at least 2 texts), reduced to ``dim`` by truncated SVD."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    counts = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True,
                             min_df=2).fit_transform(responses)
    dim = max(1, min(dim, counts.shape[1] - 1, counts.shape[0] - 1))
    return TruncatedSVD(dim, random_state=seed).fit_transform(counts)


def dsp_probe(cfg, run_dir) -> dict:
    """The domain and type-axis probes (:func:`probes`) on every cache the embed stage wrote
    (``frozen_cache``, ``cache``), and on a lexical baseline of the same texts
    (:func:`lexical_features`): whether a representation carries what separates the types."""
    from pafo_ray.train.arrays import read_cache

    rows = _frame(run_dir, "prepare", "data", columns=[
        "prompt", "chosen", "rejected", "chosen_text_id", "rejected_text_id"])
    texts = {}
    for side in ("chosen", "rejected"):
        for q, r, t in zip(rows["prompt"], rows[side], rows[f"{side}_text_id"]):
            texts[t] = (q, r)
    domain = dsp_domains(cfg.data.path)
    tuned = "tune" in run_dir.read_json("embed", "summary.json")  # the cache: a tuned backbone's
    out = {}
    for name in ("frozen_cache", "cache"):
        if not run_dir.exists("embed", name):
            continue
        cache = read_cache(run_dir.uri("embed", name))
        keep = [i for i, t in enumerate(cache.text_ids) if t in texts]
        ids = cache.text_ids[keep]
        labels = np.array([domain[texts[t]] for t in ids])
        queries = np.unique([texts[t][0] for t in ids], return_inverse=True)[1]
        label = ("frozen" if name == "frozen_cache" else "adapted"
                 if run_dir.exists("embed", "frozen_cache") else "tuned" if tuned else "frozen")
        out[label] = {**probes(cache.vectors.numpy()[keep], labels, queries),
                      "texts": len(ids), "dim": int(cache.vectors.shape[1])}
    ids = sorted(texts)
    labels = np.array([domain[texts[t]] for t in ids])
    queries = np.unique([texts[t][0] for t in ids], return_inverse=True)[1]
    lexical = lexical_features([texts[t][1] for t in ids], seed=cfg.run.seed)
    out["lexical"] = {**probes(lexical, labels, queries), "texts": len(ids),
                      "dim": int(lexical.shape[1])}
    return out


def teacher_table(run_dir) -> dict:
    """{teacher: {"val_own_group", "vanilla_on_group", "seconds"}} from the teachers stage."""
    summary = run_dir.read_json("teachers", "summary.json")
    jobs = summary["jobs"]
    vanilla = jobs.get("vanilla", {}).get("metrics", {})
    out = {}
    for name, info in jobs.items():
        group = name.removesuffix("_ft")
        m = info.get("metrics", {})
        out[name] = {"val_own_group": m.get("val_accuracy"),
                     "vanilla_on_group": (vanilla.get(f"val_{group}_accuracy")
                                          if name != "vanilla" else m.get("val_accuracy")),
                     "seconds": round(info["finished"] - info["started"], 1)
                     if "finished" in info else None}
    return out


def grouping_ceiling(x, user_index, is_minority, l2: float) -> dict:
    """Purity and recall of the lowest group after one assignment round from the true types
    (``is_minority`` ``[U]`` bool), the sizes kept: minority-type users among those placed
    lowest, and the share of minority-type users placed there; users without training rows
    are left out of both. ``x`` ``[n, K]``, ``user_index`` ``[n]`` as in ``mixture_groups``."""
    import torch

    from pafo_ray.grouping import mixture_groups

    truth = torch.from_numpy(np.array(is_minority, dtype=bool))
    result = mixture_groups(x, user_index, (~truth).long(), iterations=1, l2=l2,
                            sizes="quantile")
    rows = torch.bincount(user_index, minlength=len(truth))
    return {**_purity(result.groups.numpy() == 0, truth.numpy(), rows.numpy() > 0),
            "rows_per_user": float(np.median(rows.numpy()[rows.numpy() > 0]))}


def _purity(lowest, truth, has_rows) -> dict:
    lowest, truth = lowest & has_rows, truth & has_rows
    return {"purity": float(truth[lowest].mean()) if lowest.any() else None,
            "recall": float(lowest[truth].mean()) if truth.any() else None,
            "users": int(lowest.sum()), "minority_type_users": int(truth.sum())}


def grouping(ctx) -> dict:
    """The run's lowest group against :func:`grouping_ceiling` (user-level groups, two groups,
    data with the simulator's user_type only)."""
    from pafo_ray.stages.groups import _train_user_types, base_differences, grouping_model

    cfg, run_dir = ctx.cfg, ctx.run_dir
    if cfg.prepare.group_level != "user" or cfg.prepare.num_groups != 2:
        return {"skipped": "needs user-level groups and prepare.num_groups=2"}
    types = _train_user_types(run_dir)
    if types is None or types.isna().all():
        return {"skipped": "the data has no user_type"}
    users = run_dir.users()
    truth = (types.reindex(users["user_id"].astype(str)) == "minority").to_numpy()
    [(x, user_index)] = base_differences(ctx, grouping_model(ctx)[0], users)
    has_rows = np.bincount(user_index.numpy(), minlength=len(users)) > 0
    lowest = (users["group"] == "minority").to_numpy()
    return {"run": _purity(lowest, truth, has_rows),
            "ceiling": grouping_ceiling(x, user_index, truth, cfg.groups.l2)}


def collect(ctx) -> dict:
    """Every diagnostic this run's data allows; a failing one is reported, never fatal."""
    cfg, run_dir = ctx.cfg, ctx.run_dir
    out: dict = {}
    embed = run_dir.read_json("embed", "summary.json") if run_dir.exists("embed", "summary.json") else {}
    out["cost"] = {"encode_seconds": embed.get("encode_seconds"),
                   "embed_seconds": embed.get("seconds"),
                   "adapt": embed.get("adapt"), "tune": embed.get("tune"), "dim": embed.get("dim"),
                   "truncated_texts": embed.get("truncated_texts"), "texts": embed.get("texts")}
    steps = [("teachers", lambda: teacher_table(run_dir)), ("grouping", lambda: grouping(ctx))]
    if cfg.data.source == "dsp":
        steps += [("ceiling", lambda: dsp_ceiling(cfg)), ("probe", lambda: dsp_probe(cfg, run_dir)),
                  ("placement", lambda: dsp_placement_ceiling(cfg))]
    for name, step in steps:
        try:
            out[name] = step()
        except Exception as error:  # a diagnostic never sinks the benchmark
            out[name] = {"error": f"{type(error).__name__}: {error}"}
    return out


def main(argv=None) -> int:
    """``python -m benchmarks.diagnostics [--seeds 0 1 2]``: the DSP ceilings alone (no Ray):
    the utilities' test accuracy by type, and the placement ceiling with the true features.
    (Every diagnostic of finished quality runs: ``python -m benchmarks.quality ...
    --diagnostics-only``.)"""
    import argparse
    import json

    from benchmarks.common import DSP
    from pafo_ray.config import load_config

    parser = argparse.ArgumentParser(prog="python -m benchmarks.diagnostics")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args(argv)
    for seed in args.seeds:
        cfg = load_config(None, ["data.source=dsp", f"data.path={DSP}", f"run.seed={seed}"])
        ceiling = {k: {t: round(100 * v, 1) for t, v in d.items()}
                   for k, d in dsp_ceiling(cfg).items()}
        print(json.dumps({"dataset": "dsp", "seed": seed, **ceiling,
                          "placement": dsp_placement_ceiling(cfg)}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
