"""Converters (DSP, PersonalLLM) and the TRL/OpenRLHF format normalizer."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pafo_ray.data import convert
from pafo_ray.data.formats import normalize_preferences

DSP_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsp" / "dsp_dev.json"
needs_dsp = pytest.mark.skipif(not DSP_PATH.exists(), reason=f"DSP file absent: {DSP_PATH}")
COLUMNS = ["user_id", "prompt", "chosen", "rejected", "split", "user_type", "utility_margin"]


# ------------------------------------------------------------------------------ DSP


@pytest.fixture(scope="module")
def dsp():
    return convert.simulate_dsp(DSP_PATH) if DSP_PATH.exists() else None


@pytest.fixture(scope="module")
def dsp_records():
    return json.loads(DSP_PATH.read_text()) if DSP_PATH.exists() else None


@needs_dsp
def test_dsp_row_counts_follow_queries_pairs_and_raters(dsp, dsp_records):
    frame = dsp.rows.to_pandas()
    assert dsp.rows.column_names == COLUMNS
    split_of = frame.drop_duplicates("prompt").set_index("prompt").split
    expected, identical, silent_queries = 0, 0, 0
    for record in dsp_records:
        texts = [record["responses"][d] for d in convert.DSP_DOMAINS]
        distinct = sum(a != b for a, b in combinations(texts, 2))
        identical += 10 - distinct
        silent_queries += distinct == 0  # all five answers the same text: no comparison
        if distinct:
            expected += distinct * (2 if split_of[record["query"]] == "train" else 10)
    # 280 / 60 / 60 queries were assigned; the silent ones left no rows.
    counts = split_of.value_counts()
    assert silent_queries == 2 and counts.sum() == 400 - silent_queries
    assert 278 <= counts["train"] <= 280 and 58 <= counts["val"] <= 60 and 58 <= counts["test"] <= 60
    assert dsp.identical_pairs_skipped == identical == 45
    assert dsp.rows.schema.metadata[b"pafo.identical_pairs_skipped"] == b"45"
    assert len(frame) == expected
    assert (frame.chosen != frame.rejected).all()
    # DESIGN §6 regime: about 11 training rows per user; every user has val and test rows.
    train_rows_per_user = frame[frame.split == "train"].groupby("user_id").size()
    assert len(train_rows_per_user) == 500 and 10.5 < train_rows_per_user.mean() < 11.5
    assert frame[frame.split == "val"].user_id.nunique() == 500
    assert (frame.groupby("prompt").split.nunique() == 1).all()
    assert (frame.drop_duplicates("user_id").user_type == "minority").sum() == 100


@needs_dsp
def test_dsp_labels_follow_the_users_domain_weights(dsp, dsp_records):
    frame = dsp.rows.to_pandas()
    domains: dict = {}
    for record in dsp_records:
        for k, domain in enumerate(convert.DSP_DOMAINS):
            domains.setdefault((record["query"], record["responses"][domain]), []).append(k)
    index = {uid: i for i, uid in enumerate(dsp.users.user_ids.to_pylist())}
    checked = 0
    for row in frame.itertuples():
        chosen, rejected = domains[row.prompt, row.chosen], domains[row.prompt, row.rejected]
        if len(chosen) > 1 or len(rejected) > 1:
            continue  # a text two domains share has no single utility
        weights = dsp.users.weights[index[row.user_id]]
        assert row.utility_margin == pytest.approx(weights[chosen[0]] - weights[rejected[0]])
        assert row.utility_margin > 0
        checked += 1
    assert checked > 0.97 * len(frame)


@needs_dsp
def test_dsp_is_deterministic_by_seed_and_bt_labels_are_noisy(dsp):
    assert convert.dsp_to_table(DSP_PATH).equals(dsp.rows)
    assert not convert.dsp_to_table(DSP_PATH, seed=1).equals(dsp.rows)
    noisy = convert.dsp_to_table(DSP_PATH, label_beta=10.0, max_prompts=100)
    right = np.mean(noisy.column("utility_margin").to_numpy() > 0)
    assert 0.5 < right < 1.0
    assert len(noisy.column("prompt").unique()) == 99  # of the first 100; record 8 is silent


def test_dsp_malformed_record_names_file_record_and_field(tmp_path):
    good = {"query": "q", "responses": {d: f"{d} answer" for d in convert.DSP_DOMAINS}}
    bad = {"query": "q2", "responses": {d: "x" for d in convert.DSP_DOMAINS if d != "business"}}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps([good, bad]))
    with pytest.raises(ValueError, match=r"broken\.json: record 1: missing field 'responses\.business'"):
        convert.dsp_to_table(path)
    path.write_text(json.dumps([{"responses": good["responses"]}]))
    with pytest.raises(ValueError, match=r"record 0: missing field 'query'"):
        convert.dsp_to_table(path)


# ----------------------------------------------------------------------- PersonalLLM

GEMMA = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]  # response j of prompt p at 3p + j
MISTRAL = [3.0, 1.0, 2.0, 0.0, 0.0, 6.0, 2.0, 2.0, 5.0]


def personalllm_columns() -> dict:
    columns = {"prompt": ["p0", "p1", "p2"], "subset": ["a", "b", "c"]}
    for j in range(3):
        columns[f"response_{j + 1}"] = [f"answer {j} to p{p}" for p in range(3)]
        columns[f"response_{j + 1}_gemma_2b"] = GEMMA[j::3]
        columns[f"response_{j + 1}_mistral_ray"] = MISTRAL[j::3]
        columns[f"response_{j + 1}_model"] = ["some-llm"] * 3  # text: not a reward model
    return columns


OPTIONS = dict(num_users=20, minority_fraction=0.25, raters_train=2, raters_eval=3,
               val_fraction=1 / 3, test_fraction=1 / 3, pairs_per_prompt=None)


def test_personalllm_utilities_match_hand_computation(tmp_path):
    path = tmp_path / "tiny.parquet"
    pq.write_table(pa.table(personalllm_columns()), path)
    result = convert.simulate_personalllm(path, **OPTIONS)
    assert result.users.feature_names == ("gemma_2b", "mistral_ray")
    frame = result.rows.to_pandas()
    assert len(frame) == 3 * (2 + 3 + 3)  # 3 pairs per prompt; 1 train, 1 val, 1 test prompt
    # Standardized scores, by hand: gemma mean 5, std sqrt(60/9); mistral mean 21/9.
    gemma = (np.array(GEMMA) - 5.0) / np.sqrt(60 / 9)
    mistral = (np.array(MISTRAL) - 21 / 9) / np.std(MISTRAL)
    row = frame.iloc[0]
    prompt = int(row.prompt[1:])
    chosen, rejected = 3 * prompt + int(row.chosen.split()[1]), 3 * prompt + int(row.rejected.split()[1])
    w = result.users.weights[int(row.user_id[1:])]
    expected = w[0] * (gemma[chosen] - gemma[rejected]) + w[1] * (mistral[chosen] - mistral[rejected])
    assert row.utility_margin == pytest.approx(expected, abs=1e-12)
    assert (frame.utility_margin > 0).all()
    # The same file as JSON lines gives the same rows.
    jsonl = tmp_path / "tiny.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in pa.table(personalllm_columns()).to_pylist()))
    assert convert.personalllm_to_table(jsonl, **OPTIONS).equals(result.rows)


def test_personalllm_pairs_per_prompt(tmp_path):
    path = tmp_path / "tiny.parquet"
    pq.write_table(pa.table(personalllm_columns()), path)
    frame = convert.personalllm_to_table(path, **{**OPTIONS, "pairs_per_prompt": 2}).to_pandas()
    pairs = frame.assign(pair=[frozenset(p) for p in zip(frame.chosen, frame.rejected)])
    assert (pairs.groupby("prompt").pair.nunique() == 2).all()


def test_personalllm_modes_peak_on_the_least_correlated_models():
    base = np.random.default_rng(0).normal(size=(12, 1))
    scores = np.hstack([base, base + 0.01, -base])  # models 0 and 2 disagree most
    majority, minority = convert.personalllm_modes(scores, per_prompt=4)
    assert np.argmax(majority) == 0 and np.argmax(minority) == 2
    np.testing.assert_allclose([majority.sum(), minority.sum()], 1.0)


@pytest.mark.parametrize("drop", ["response_2_mistral_ray", "prompt", "response_3"])
def test_personalllm_missing_column_names_file_and_column(tmp_path, drop):
    columns = personalllm_columns()
    del columns[drop]
    path = tmp_path / "partial.parquet"
    pq.write_table(pa.table(columns), path)
    with pytest.raises(ValueError, match=rf"partial\.parquet: missing column '{drop}'"):
        convert.personalllm_to_table(path, **OPTIONS)


# --------------------------------------------------------------------------- formats


def messages(*turns):
    return [{"role": role, "content": content} for role, content in turns]


def test_standard_rows_are_unchanged_with_margin_and_other_columns():
    table = pa.table({"user_id": ["u1"], "prompt": ["Sky?"], "chosen": ["Blue."],
                      "rejected": ["Green."], "margin": pa.array([2], pa.int64()), "extra": [7]})
    out = normalize_preferences(table, "standard.jsonl")
    assert out.to_pylist() == [{"user_id": "u1", "prompt": "Sky?", "chosen": "Blue.",
                                "rejected": "Green.", "margin": 2, "extra": 7}]
    assert out.equals(table)


def test_conversational_implicit_prompt_is_the_shared_leading_messages():
    shared = [("system", "Be brief."), ("user", "Sky colour?")]
    table = pa.table({
        "user_id": ["u1", "u2"],
        "chosen": [messages(*shared, ("assistant", "Blue.")),
                   messages(("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"), ("assistant", "Ciao"))],
        "rejected": [messages(*shared, ("assistant", "Green.")),
                     messages(("user", "Hi"), ("assistant", "Go away."))],
        "weight": [0.5, 1.0],
    })
    out = normalize_preferences(table, "chat.parquet")
    assert out.column_names == ["user_id", "prompt", "chosen", "rejected", "weight"]
    assert out.to_pylist() == [
        {"user_id": "u1", "prompt": "system: Be brief.\nuser: Sky colour?",
         "chosen": "assistant: Blue.", "rejected": "assistant: Green.", "weight": 0.5},
        {"user_id": "u2", "prompt": "user: Hi",
         "chosen": "assistant: Hello!\nuser: Bye\nassistant: Ciao",
         "rejected": "assistant: Go away.", "weight": 1.0},
    ]


def test_conversational_explicit_prompt_as_messages_or_string():
    answer = {"chosen": [messages(("assistant", "Four."))], "rejected": [messages(("assistant", "Five."))]}
    as_messages = pa.table({"prompt": [messages(("user", "2+2?"))], **answer})
    as_string = pa.table({"prompt": ["2+2?"], **answer})
    assert normalize_preferences(as_messages, "a").to_pylist() == [
        {"prompt": "user: 2+2?", "chosen": "assistant: Four.", "rejected": "assistant: Five."}]
    assert normalize_preferences(as_string, "b").to_pylist()[0]["prompt"] == "2+2?"


@pytest.mark.parametrize("table, column", [
    (pa.table({"prompt": ["q"], "chosen": [1], "rejected": ["b"]}), "chosen"),
    (pa.table({"prompt": ["q"], "chosen": ["a"], "rejected": [[1, 2]]}), "rejected"),
    (pa.table({"prompt": [3], "chosen": ["a"], "rejected": ["b"]}), "prompt"),
])
def test_unknown_shapes_name_source_and_column(table, column):
    with pytest.raises(ValueError, match=rf"prefs\.jsonl: column '{column}'"):
        normalize_preferences(table, "prefs.jsonl")
