"""TRL / OpenRLHF preference rows turned into our string columns ``prompt, chosen, rejected``.

Accepted shapes (per table, as TRL's dataset formats):

- standard: ``prompt``, ``chosen``, ``rejected`` strings — kept as they are;
- conversational, explicit prompt: ``chosen`` / ``rejected`` lists of ``{role, content}``
  messages and a ``prompt`` column of messages or strings;
- conversational, implicit prompt: no ``prompt`` column; the prompt is the leading messages
  that ``chosen`` and ``rejected`` share, the responses are what follows.

A message list is rendered as ``"{role}: {content}"`` lines joined by ``"\\n"``. OpenRLHF's
``margin``, a ``weight`` and every other column are kept unchanged: the row validator checks
their values row by row (bad rows are set aside and counted there, not here).
"""

from __future__ import annotations

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


def normalize_preferences(table: pa.Table, source: str) -> pa.Table:
    """Rows in TRL/OpenRLHF preference format → string ``prompt``, ``chosen``, ``rejected``.

    ``source`` names the input in error messages (a file path, a dataset name).
    Raises DataValidationError (a ValueError) naming ``source`` and the column when a column
    has another shape.
    """
    for column in _RESPONSES:
        if column not in table.column_names:
            raise DataValidationError(f"{source}: missing column {column!r}")
    kinds = {column: _check_kind(table, column, source) for column in _RESPONSES}
    if kinds["chosen"] != kinds["rejected"]:
        raise DataValidationError(f"{source}: column 'chosen' holds {kinds['chosen']} but column "
                         f"'rejected' holds {kinds['rejected']}; expected the same format")
    has_prompt = "prompt" in table.column_names

    if kinds["chosen"] == "text":
        if not has_prompt:
            raise DataValidationError(f"{source}: missing column 'prompt' (string responses need an "
                             "explicit prompt; only message lists can share an implicit one)")
        prompt, chosen, rejected = table.column("prompt"), table.column("chosen"), table.column("rejected")
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
