"""Real text turned into preference rows by a simulated user population.

The population and the rating process are :mod:`pafo_ray.data.simulate`'s (shared with the
synthetic generator); this module supplies the texts and their features.

- DSP (``dsp_to_table``): features = one-hot domain of the response, so ``u`` is the user's
  weight on the response's domain; all 10 domain pairs per query. The DESIGN §6 regime.
- PersonalLLM (``personalllm_to_table``): features = reward-model scores, each standardized
  over the file; modes peak on the two reward models whose pair differences agree least.

Pairs whose two texts are identical carry no preference: they are skipped and counted
(``Simulated.identical_pairs_skipped`` and the table's schema metadata).
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pyarrow as pa

from pafo_ray.data.simulate import Simulated, simulate_texts

log = logging.getLogger(__name__)
DSP_DOMAINS = ("academy", "business", "entertainment", "literature", "normal")
# Majority: academic and business answers; minority: entertainment and literature.
DSP_MAJORITY_MODE = np.array([0.40, 0.25, 0.05, 0.10, 0.20])
DSP_MINORITY_MODE = np.array([0.10, 0.05, 0.40, 0.25, 0.20])


# ----------------------------------------------------------------------------- DSP


def read_dsp(path, max_prompts=None) -> tuple[list[str], list[str]]:
    """(queries [Q], responses [Q·5] in DSP_DOMAINS order) from a JSON list (or JSON lines)."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a JSON list or JSON lines file ({error})") from None
    queries, responses = [], []
    for index, record in enumerate(records[:max_prompts]):
        where = f"{path}: record {index}"
        if not isinstance(record, dict) or not isinstance(record.get("query"), str):
            raise ValueError(f"{where}: missing field 'query' (expected a string)")
        answers = record.get("responses")
        if not isinstance(answers, dict):
            raise ValueError(f"{where}: missing field 'responses' (expected an object of domains)")
        for domain in DSP_DOMAINS:
            if not isinstance(answers.get(domain), str):
                raise ValueError(f"{where}: missing field 'responses.{domain}' (expected a string)")
        queries.append(record["query"])
        responses.extend(answers[domain] for domain in DSP_DOMAINS)
    if not queries:
        raise ValueError(f"{path}: no records")
    return queries, responses


def simulate_dsp(path, *, num_users=500, minority_fraction=0.2, raters_train=2, raters_eval=10,
                 label_beta=None, max_prompts=None, val_fraction=0.15, test_fraction=0.15, seed=0,
                 dirichlet_concentration=10.0, utility_noise=0.0) -> Simulated:
    """DSP queries × all 10 domain pairs, rated by users who weigh the 5 domains."""
    options = {k: v for k, v in locals().items() if k not in ("path", "max_prompts")}
    queries, responses = read_dsp(path, max_prompts)
    one_hot = np.tile(np.eye(len(DSP_DOMAINS)), (len(queries), 1))
    return simulate_texts(queries, responses, one_hot, None, (DSP_MAJORITY_MODE, DSP_MINORITY_MODE),
                     DSP_DOMAINS, **options)


def dsp_to_table(path, **options) -> pa.Table:
    """Preference rows from a DSP file; options as :func:`simulate_dsp`."""
    return simulate_dsp(path, **options).rows


# --------------------------------------------------------------------- PersonalLLM


def read_personalllm(path, max_prompts=None):
    """(prompts [P], responses [P·R], standardized scores [P·R, M], reward-model names [M])."""
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    path = str(path)
    if path.endswith(".parquet"):
        table = pq.read_table(path)
    elif path.endswith((".jsonl", ".json")):
        table = pa_json.read_json(path)
    else:
        raise ValueError(f"{path}: expected a .parquet or .jsonl file")
    if max_prompts is not None:
        table = table.slice(0, max_prompts)
    names = table.column_names
    scored = {c: m for c in names if (m := re.fullmatch(r"response_(\d+)_(.+)", c))
              and (pa.types.is_integer(table.schema.field(c).type)
                   or pa.types.is_floating(table.schema.field(c).type))}
    models = sorted({m.group(2) for m in scored.values()})
    texts = [int(m.group(1)) for c in names if (m := re.fullmatch(r"response_(\d+)", c))]
    count = max([*texts, *(int(m.group(1)) for m in scored.values()), 1])
    if count < 2:
        raise ValueError(f"{path}: missing column 'response_2' (need response_1..response_R, R >= 2)")
    if not models:
        raise ValueError(f"{path}: missing column 'response_1_<reward model>' (numeric scores)")
    responses = range(1, count + 1)
    needed = ["prompt"] + [f"response_{i}" for i in responses] + [
        f"response_{i}_{rm}" for i in responses for rm in models]
    for column in needed:
        if column not in names:
            raise ValueError(f"{path}: missing column {column!r} (reward models found: {models})")
        nulls = table.column(column).is_null().to_numpy(zero_copy_only=False)
        if nulls.any():
            raise ValueError(f"{path}: column {column!r} is empty in row {int(np.argmax(nulls))}")
    prompts = table.column("prompt").to_pylist()
    texts = np.column_stack([table.column(f"response_{i}").to_numpy(zero_copy_only=False)
                             for i in responses]).ravel().tolist()
    scores = np.stack([np.column_stack([table.column(f"response_{i}_{rm}").to_numpy(
        zero_copy_only=False).astype(float) for rm in models]) for i in responses], axis=1)
    scores = scores.reshape(-1, len(models))  # [P·R, M], prompt-major
    spread = scores.std(axis=0)
    scores = (scores - scores.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    return prompts, texts, scores, models


def personalllm_modes(scores: np.ndarray, per_prompt: int, peak: float = 0.5):
    """Modes peaking on the two reward models whose within-prompt differences correlate least."""
    m = scores.shape[1]
    if m < 2:
        raise ValueError("PersonalLLM: need at least two reward models to form disagreeing modes")
    first, second = np.triu_indices(per_prompt, 1)
    grouped = scores.reshape(-1, per_prompt, m)
    differences = (grouped[:, first] - grouped[:, second]).reshape(-1, m)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.nan_to_num(np.corrcoef(differences.T), nan=1.0).reshape(m, m)
    upper = np.triu_indices(m, 1)
    best = int(np.argmin(correlation[upper]))
    modes = np.full((2, m), (1.0 - peak) / (m - 1))
    modes[0, upper[0][best]] = modes[1, upper[1][best]] = peak
    return modes[0], modes[1]


def simulate_personalllm(path, *, num_users=500, minority_fraction=0.2, pairs_per_prompt=4,
                         raters_train=2, raters_eval=10, label_beta=None, max_prompts=None,
                         val_fraction=0.15, test_fraction=0.15, seed=0,
                         dirichlet_concentration=10.0, utility_noise=0.0) -> Simulated:
    """PersonalLLM prompts × ``pairs_per_prompt`` random response pairs (None: all pairs).

    Utility ``u = Σ_k w_k · z_k`` with ``z_k`` reward model k's score standardized over the file.
    """
    options = {k: v for k, v in locals().items()
               if k not in ("path", "max_prompts", "pairs_per_prompt")}
    prompts, texts, scores, models = read_personalllm(path, max_prompts)
    modes = personalllm_modes(scores, len(texts) // len(prompts))
    return simulate_texts(prompts, texts, scores, pairs_per_prompt, modes, models, **options)


def personalllm_to_table(path, **options) -> pa.Table:
    """Preference rows from a PersonalLLM file; options as :func:`simulate_personalllm`."""
    return simulate_personalllm(path, **options).rows
