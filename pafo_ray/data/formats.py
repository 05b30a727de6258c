"""TRL / OpenRLHF preference rows turned into our string columns ``prompt, chosen, rejected``.

Accepted shapes (per table, as TRL's dataset formats):

- standard: ``prompt``, ``chosen``, ``rejected`` strings — kept as they are;
- conversational, explicit prompt: ``chosen`` / ``rejected`` lists of ``{role, content}``
  messages and a ``prompt`` column of messages or strings;
- conversational, implicit prompt: no ``prompt`` column; the prompt is the leading messages
  that ``chosen`` and ``rejected`` share, the responses are what follows.

- plain strings, implicit prompt (Anthropic hh-rlhf): no ``prompt`` column; ``chosen`` and
  ``rejected`` are whole dialogues that share their start. The prompt is their longest common
  prefix cut after the last turn boundary in it (``data.prompt_boundary``, default
  ``"\\n\\nAssistant:"``); the responses are what follows (leading spaces dropped). A row
  whose shared prefix holds no boundary gets no prompt (set aside as ``empty_prompt``).

Message lists are rendered with the backbone tokenizer's chat template when it has one (as
TRL's ``maybe_apply_chat_template``: the prompt with the generation prompt, each response as
the rendering of prompt + response after the prompt's text); otherwise as
``"{role}: {content}"`` lines joined by ``"\\n"``. ``data.columns`` maps our column names to
the file's (OpenRLHF's ``--prompt_key/--chosen_key/--rejected_key``). OpenRLHF's ``margin``,
a ``weight`` and every other column are kept unchanged: the row validator checks their values
row by row (bad rows are set aside and counted there, not here).
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from pafo_ray.data.sources import DataValidationError

_RESPONSES = ("chosen", "rejected")


def _is_text(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def _is_messages(data_type: pa.DataType) -> bool:
    """A list of structs with string ``role`` and ``content`` fields."""
    if not (pa.types.is_list(data_type) or pa.types.is_large_list(data_type)):
        return False
    item = data_type.value_type
    if not pa.types.is_struct(item):
        return False
    names = {item.field(i).name: item.field(i).type for i in range(item.num_fields)}
    return all(key in names and _is_text(names[key]) for key in ("role", "content"))


def _check_kind(table: pa.Table, column: str, source: str) -> str:
    data_type = table.schema.field(column).type
    if _is_text(data_type):
        return "text"
    if _is_messages(data_type):
        return "messages"
    raise DataValidationError(f"{source}: column {column!r} has type {data_type}; expected strings or "
                     "lists of {role, content} messages")


def _message_lines(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Each row's messages as a list of ``"{role}: {content}"`` strings (nulls stay null)."""
    chunks = []
    for array in column.chunks:
        flat = array.flatten()
        lines = pc.binary_join_element_wise(
            pc.struct_field(flat, "role"), pc.struct_field(flat, "content"), ": ",
            null_handling="replace")
        offsets = pc.subtract(array.offsets, array.offsets[0])
        list_type = pa.LargeListArray if pa.types.is_large_list(array.type) else pa.ListArray
        chunks.append(list_type.from_arrays(offsets, lines, mask=array.is_null()))
    return pa.chunked_array(chunks, type=pa.list_(pa.string()) if not chunks else chunks[0].type)


def _render(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Message lists as text: one ``"{role}: {content}"`` line per message."""
    return pc.binary_join(_message_lines(column), "\n")


def _split_implicit_prompt(chosen: pa.ChunkedArray, rejected: pa.ChunkedArray):
    """(prompt, chosen, rejected) texts: the shared leading messages are the prompt."""
    prompts, chosen_texts, rejected_texts = [], [], []
    for chosen_lines, rejected_lines in zip(_message_lines(chosen).to_pylist(),
                                            _message_lines(rejected).to_pylist()):
        if chosen_lines is None or rejected_lines is None:
            prompts.append(None)
            chosen_texts.append(None if chosen_lines is None else "\n".join(chosen_lines))
            rejected_texts.append(None if rejected_lines is None else "\n".join(rejected_lines))
            continue
        shared = 0
        for mine, theirs in zip(chosen_lines, rejected_lines):
            if mine != theirs:
                break
            shared += 1
        prompts.append("\n".join(chosen_lines[:shared]))
        chosen_texts.append("\n".join(chosen_lines[shared:]))
        rejected_texts.append("\n".join(rejected_lines[shared:]))
    return (pa.array(prompts, pa.string()), pa.array(chosen_texts, pa.string()),
            pa.array(rejected_texts, pa.string()))


HH_BOUNDARY = "\n\nAssistant:"


def rename_columns(table: pa.Table, columns: dict, source: str) -> pa.Table:
    """``columns``: {our name: the file's column}. A column of ours that the mapping replaces
    (a ``prompt`` beside the mapped ``question``) is dropped."""
    for ours, theirs in columns.items():
        if theirs not in table.column_names:
            raise DataValidationError(
                f"{source}: data.columns.{ours}={theirs!r} is not a column (has "
                f"{', '.join(c for c in table.column_names if c not in _PROVENANCE)})")
    renamed = {theirs: ours for ours, theirs in columns.items()}
    keep = [c for c in table.column_names if c in renamed or c not in columns]
    return table.select(keep).rename_columns([renamed.get(c, c) for c in keep])


_PROVENANCE = ("source_file", "source_row", "row_id")


def split_text_prompt(chosen: list, rejected: list, boundary: str) -> tuple[list, list, list]:
    """hh-rlhf rows: (prompt, chosen, rejected) from two whole dialogues sharing their start."""
    prompts, chosen_out, rejected_out = [], [], []
    for c, r in zip(chosen, rejected):
        shared = os.path.commonprefix([c, r]) if c is not None and r is not None else ""
        cut = shared.rfind(boundary)
        if cut < 0:
            prompts.append(None)
            chosen_out.append(c)
            rejected_out.append(r)
            continue
        cut += len(boundary)
        prompts.append(c[:cut])
        chosen_out.append(c[cut:].lstrip())
        rejected_out.append(r[cut:].lstrip())
    return prompts, chosen_out, rejected_out


Renderer = Callable[[list, bool], str]


@functools.lru_cache(maxsize=4)
def chat_renderer(backbone: Optional[str]) -> Optional[Renderer]:
    """``render(messages, add_generation_prompt)`` with the backbone tokenizer's chat template;
    None when the tokenizer has none (or no backbone is named). Once per worker process."""
    if not backbone or backbone == "builtin-tiny":  # a word tokenizer built here: no template
        return None
    from transformers import AutoTokenizer

    from pafo_ray.models.backbone import resolve_backbone

    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(backbone), local_files_only=True)
    if not getattr(tokenizer, "chat_template", None):
        return None

    def render(messages: list, add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    return render


def _messages(value) -> Optional[list]:
    if value is None:
        return None
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _templated(prompt: pa.ChunkedArray, chosen: pa.ChunkedArray, rejected: pa.ChunkedArray,
               render: Renderer, implicit: bool):
    """Per row, as TRL's maybe_apply_chat_template (after extract_prompt when implicit)."""
    out: tuple[list, list, list] = ([], [], [])
    prompts = prompt.to_pylist() if prompt is not None else [None] * len(chosen)
    for p, c, r in zip(prompts, chosen.to_pylist(), rejected.to_pylist()):
        c, r = _messages(c), _messages(r)
        if c is None or r is None:
            for column, value in zip(out, (None, c, r)):
                column.append(None if value is None else render(value, False))
            continue
        if implicit:
            shared = 0
            while shared < min(len(c), len(r)) and c[shared] == r[shared]:
                shared += 1
            p, c, r = c[:shared], c[shared:], r[shared:]
        else:
            p = _messages(p) or []
        if not p:
            out[0].append(None)
            out[1].append(render(c, False))
            out[2].append(render(r, False))
            continue
        head = render(p, True)
        out[0].append(head)
        for column, response in ((out[1], c), (out[2], r)):
            full = render(p + response, False)
            column.append(full[len(head):] if full.startswith(head) else full)
    return tuple(pa.array(column, pa.string()) for column in out)


def normalize_preferences(table: pa.Table, source: str, *, columns: Optional[dict] = None,
                          chat_backbone: Optional[str] = None,
                          prompt_boundary: str = HH_BOUNDARY) -> pa.Table:
    """Rows in TRL/OpenRLHF preference format → string ``prompt``, ``chosen``, ``rejected``.

    ``source`` names the input in error messages (a file path, a dataset name).
    ``columns`` maps our names to the table's; ``chat_backbone`` names the backbone whose
    chat template renders message lists (None or no template: ``role: content`` lines);
    ``prompt_boundary`` cuts the implicit prompt of plain strings ("": no implicit prompt).
    Raises DataValidationError (a ValueError) naming ``source`` and the column when a column
    has another shape.
    """
    if columns:
        table = rename_columns(table, columns, source)
    for column in _RESPONSES:
        if column not in table.column_names:
            raise DataValidationError(f"{source}: missing column {column!r}")
    kinds = {column: _check_kind(table, column, source) for column in _RESPONSES}
    if kinds["chosen"] != kinds["rejected"]:
        raise DataValidationError(f"{source}: column 'chosen' holds {kinds['chosen']} but column "
                         f"'rejected' holds {kinds['rejected']}; expected the same format")
    has_prompt = "prompt" in table.column_names

    render = chat_renderer(chat_backbone) if kinds["chosen"] == "messages" else None
    if kinds["chosen"] == "text":
        chosen, rejected = table.column("chosen"), table.column("rejected")
        if has_prompt:
            prompt = table.column("prompt")
        elif prompt_boundary:
            prompt, chosen, rejected = (pa.array(c, pa.string()) for c in split_text_prompt(
                chosen.to_pylist(), rejected.to_pylist(), prompt_boundary))
        else:
            raise DataValidationError(f"{source}: missing column 'prompt' (string responses need an "
                             "explicit prompt, or data.prompt_boundary to find the shared one)")
    elif render is not None:
        if has_prompt:
            _check_kind(table, "prompt", source)
        prompt, chosen, rejected = _templated(
            table.column("prompt") if has_prompt else None, table.column("chosen"),
            table.column("rejected"), render, implicit=not has_prompt)
        if has_prompt:  # rendered above: added back in place below
            table, has_prompt = table.drop_columns(["prompt"]), False
    elif has_prompt:
        chosen, rejected = _render(table.column("chosen")), _render(table.column("rejected"))
        prompt = table.column("prompt")
    else:
        prompt, chosen, rejected = _split_implicit_prompt(table.column("chosen"),
                                                          table.column("rejected"))
    if has_prompt:
        prompt_kind = _check_kind(table, "prompt", source)
        prompt = _render(prompt) if prompt_kind == "messages" else prompt
        table = table.set_column(table.column_names.index("prompt"), "prompt", prompt)
    else:
        table = table.add_column(table.column_names.index("chosen"), "prompt", prompt)
    for column, values in (("chosen", chosen), ("rejected", rejected)):
        table = table.set_column(table.column_names.index(column), column, values)

    return table
