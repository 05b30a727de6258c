"""The preference formats people already have (DESIGN §7), through ``prepare``: a TRL-style
conversational dataset (``datasets.save_to_disk``) rendered with the backbone tokenizer's chat
template, an hh-rlhf-style file whose prompt is implicit in plain strings, and an
OpenRLHF-style file with its own column names mapped by ``data.columns``."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pafo_ray.cli import main
from pafo_ray.config_checks import MAPPABLE
from pafo_ray.data.formats import chat_renderer, normalize_preferences, split_text_prompt
from pafo_ray.data.schema import OPTIONAL, REQUIRED
from pafo_ray.data.sources import DataValidationError

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
USERS = ["u1", "u2", "u3", "u4"]


@pytest.fixture(scope="module")
def templated_backbone(tmp_path_factory):
    """A tiny backbone whose tokenizer carries a chat template (built here, no download)."""
    from transformers import AutoTokenizer

    from pafo_ray.models.backbone import build_tiny_backbone

    path = build_tiny_backbone(tmp_path_factory.mktemp("chat") / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)
    return path


def _msgs(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


def test_messages_use_the_chat_template_when_the_tokenizer_has_one(templated_backbone):
    table = pa.Table.from_pylist([{
        "user_id": "u1", "prompt": _msgs(("user", "Hi")),
        "chosen": _msgs(("assistant", "Hello!")), "rejected": _msgs(("assistant", "Go away."))}])
    out = normalize_preferences(table, "t", chat_backbone=templated_backbone).to_pylist()[0]
    assert (out["prompt"], out["chosen"], out["rejected"]) == (
        "<|user|>Hi\n<|assistant|>", "Hello!\n", "Go away.\n")  # TRL: full[len(prompt):]
    # Implicit prompt: the shared leading messages.
    implicit = table.drop_columns(["prompt"])
    implicit = implicit.set_column(1, "chosen", pa.array(
        [_msgs(("user", "Hi"), ("assistant", "Hello!"))]))
    implicit = implicit.set_column(2, "rejected", pa.array(
        [_msgs(("user", "Hi"), ("assistant", "Go away."))]))
    out = normalize_preferences(implicit, "t", chat_backbone=templated_backbone).to_pylist()[0]
    assert out["prompt"] == "<|user|>Hi\n<|assistant|>" and out["chosen"] == "Hello!\n"
    # Without a template (builtin-tiny, or chat_template=none): role: content lines.
    assert chat_renderer("builtin-tiny") is None
    out = normalize_preferences(table, "t", chat_backbone=None).to_pylist()[0]
    assert (out["prompt"], out["chosen"]) == ("user: Hi", "assistant: Hello!")


def test_implicit_prompt_of_plain_strings_cuts_at_the_last_shared_turn():
    chosen = ["\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: Sure, one.",
              "no boundary here: a", "\n\nHuman: Q\n\nAssistant: Yes"]
    rejected = ["\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: Sure? No.",
                "no boundary here: b", "\n\nHuman: Q\n\nAssistant: No"]
    prompts, c, r = split_text_prompt(chosen, rejected, "\n\nAssistant:")
    # The shared prefix "...Assistant: Sure" is cut after the last "\n\nAssistant:".
    assert prompts[0] == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant:"
    assert (c[0], r[0]) == ("Sure, one.", "Sure? No.")
    assert prompts[1] is None and (c[1], r[1]) == ("no boundary here: a", "no boundary here: b")
    assert (prompts[2], c[2], r[2]) == ("\n\nHuman: Q\n\nAssistant:", "Yes", "No")


def test_a_column_mapping_renames_and_names_a_missing_column():
    table = pa.table({"question": ["Q"], "pos": ["a"], "neg": ["b"], "uid": ["u"], "prompt": ["x"]})
    mapping = {"prompt": "question", "chosen": "pos", "rejected": "neg", "user_id": "uid"}
    out = normalize_preferences(table, "f.jsonl", columns=mapping).to_pylist()
    assert out == [{"prompt": "Q", "chosen": "a", "rejected": "b", "user_id": "u"}]
    with pytest.raises(DataValidationError, match=r"f\.jsonl: data\.columns\.chosen='good'"):
        normalize_preferences(table, "f.jsonl", columns={"chosen": "good"})


def test_mappable_columns_are_the_schemas():
    assert set(MAPPABLE) == set(REQUIRED) | set(OPTIONAL)


def _prepared(tmp_path, *overrides) -> list:
    args = [f"run.storage_path={tmp_path / 'runs'}", "run.run_name=f", "run.ray.progress_bars=false",
            "prepare.group_level=row", "prepare.min_raters=1", *overrides]
    assert main(["prepare", *args]) == 0
    ds = pads.dataset(str(tmp_path / "runs" / "f" / "prepare" / "data"), format="parquet",
                      partitioning="hive")
    rows = ds.to_table().to_pylist()
    return sorted(rows, key=lambda r: r["source_row"])


@pytest.mark.ray
def test_a_trl_conversational_dataset_saved_to_disk(ray_session, tmp_path, templated_backbone):
    import datasets

    rows = [{"user_id": u, "prompt": _msgs(("user", f"Question {p}?")),
             "chosen": _msgs(("assistant", f"Good answer {p}.")),
             "rejected": _msgs(("assistant", f"Bad answer {p}."))}
            for p in range(3) for u in USERS]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "trl"))
    out = _prepared(tmp_path, "data.source=hf", f"data.path={tmp_path / 'trl'}",
                    f"model.backbone={templated_backbone}")
    assert len(out) == 12 and all(r["split"] != "set_aside" for r in out)
    assert out[0]["prompt"] == "<|user|>Question 0?\n<|assistant|>"
    assert out[0]["chosen"] == "Good answer 0.\n"


@pytest.mark.ray
def test_an_hh_rlhf_file_with_implicit_prompts(ray_session, tmp_path):
    path = tmp_path / "hh.jsonl"
    with open(path, "w") as fh:
        for p in range(3):
            for u in USERS:
                head = f"\n\nHuman: Tell me about {p}.\n\nAssistant:"
                fh.write(json.dumps({"user_id": u, "chosen": f"{head} Here is {p}.",
                                     "rejected": f"{head} No."}) + "\n")
    out = _prepared(tmp_path, "data.source=jsonl", f"data.path={path}")
    assert len(out) == 12 and all(r["split"] != "set_aside" for r in out)
    assert out[0]["prompt"] == "\n\nHuman: Tell me about 0.\n\nAssistant:"
    assert (out[0]["chosen"], out[0]["rejected"]) == ("Here is 0.", "No.")


@pytest.mark.ray
def test_an_openrlhf_file_with_its_own_column_names(ray_session, tmp_path):
    rows = [{"question": f"Q{p}", "pos": f"yes {p}", "neg": f"no {p}", "uid": u, "margin": 0.5}
            for p in range(3) for u in USERS]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "o.parquet")
    out = _prepared(tmp_path, "data.source=parquet", f"data.path={tmp_path / 'o.parquet'}",
                    "data.columns={prompt: question, chosen: pos, rejected: neg, user_id: uid}")
    assert len(out) == 12 and all(r["split"] != "set_aside" for r in out)
    assert (out[0]["prompt"], out[0]["chosen"], out[0]["user_id"]) == ("Q0", "yes 0", "u1")
    assert out[0]["margin"] == 0.5
