"""Row checks of ``prepare``: every input row ends either valid or set aside with a reason.

``validate_table`` is vectorised (pyarrow compute) and runs inside Ray Data tasks. In
strict mode the chunk's first bad row (in file order) raises :class:`DataValidationError` naming file, row and
field; otherwise the row keeps flowing with ``set_aside_reason`` set, and ``prepare``
writes it under ``split=set_aside`` so nothing is lost.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pafo_ray.data.schema import REQUIRED, SPLITS, row_keys
from pafo_ray.data.sources import DataValidationError

# Every chunk leaves the read step with exactly this schema, so blocks concatenate.
CANONICAL = pa.schema([
    ("row_id", pa.int64()), ("source_file", pa.string()), ("source_row", pa.int64()),
    ("user_id", pa.string()), ("prompt", pa.string()), ("chosen", pa.string()),
    ("rejected", pa.string()), ("weight", pa.float64()), ("given_support", pa.float64()),
    ("split", pa.string()), ("user_type", pa.string()), ("margin", pa.float64()),
    ("utility_margin", pa.float64()), ("comparison_key", pa.int64()),
    ("chosen_is_first", pa.bool_()), ("chosen_text_id", pa.int64()),
    ("rejected_text_id", pa.int64()), ("set_aside_reason", pa.string()),
    ("set_aside_detail", pa.string()),
])


def _as_string(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return column.cast(pa.string())
    return column.cast(pa.string())  # raises ArrowInvalid for nested types; caught by caller


def _as_float(column: pa.ChunkedArray, n: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Values as float64 plus a bad-value mask and the raw text of bad values."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.zeros(n, dtype=bool)
        return values, bad, [None] * n
    raw = column.to_pylist()
    values = np.full(n, np.nan)
    bad = np.zeros(n, dtype=bool)
    for i, value in enumerate(raw):
        try:
            values[i] = float(value) if value is not None else np.nan
        except (TypeError, ValueError):
            bad[i] = True
    return values, bad, [None if not b else repr(v) for b, v in zip(bad, raw)]


def _problem(table: pa.Table, index: int, field: str, what: str) -> DataValidationError:
    file = table.column("source_file")[index].as_py()
    row = table.column("source_row")[index].as_py()
    return DataValidationError(f"{file} row {row}: field '{field}' {what}")


def validate_table(table: pa.Table, *, strict: bool, split_seed: int, val_fraction: float,
                   test_fraction: float) -> pa.Table:
    """Check one chunk and bring it to :data:`CANONICAL`.

    Reasons (first that applies wins): ``empty_<field>`` (null or blank user_id, prompt,
    chosen or rejected), ``same_response`` (chosen == rejected), ``bad_weight``
    (non-numeric, NaN or negative), ``bad_support_rate`` (given and outside [0, 1]),
    ``bad_split`` (given and not train/val/test).
    """
    n = table.num_rows
    file = table.column("source_file")[0].as_py() if n else "?"
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise DataValidationError(
            f"{file}: missing column '{missing[0]}' (need {', '.join(REQUIRED)}; has "
            f"{', '.join(c for c in table.column_names if c not in ('source_file', 'source_row', 'row_id'))})")
    reason = np.full(n, "", dtype=object)
    detail = np.full(n, "", dtype=object)

    first_bad: list = []  # strict: (row index, field, what) of each check's first new bad row

    def flag(mask: np.ndarray, name: str, field: str, what: str, raw=None) -> None:
        fresh = mask & (reason == "")
        if not fresh.any():
            return
        if strict:
            first_bad.append((int(np.argmax(fresh)), field, what))
        reason[fresh] = name
        if raw is not None:
            detail[fresh] = [str(raw[i]) for i in np.flatnonzero(fresh)]

    columns = {}
    for field in REQUIRED:
        try:
            col = _as_string(table.column(field))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataValidationError(
                f"{file}: column '{field}' has type {table.column(field).type}; expected text "
                "(conversational message lists are converted by data.formats)") from exc
        columns[field] = col
        blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0), True)
        flag(blank.to_numpy(zero_copy_only=False), f"empty_{field}", field, "is null or empty")
    same = pc.fill_null(pc.equal(columns["chosen"], columns["rejected"]), False)
    flag(same.to_numpy(zero_copy_only=False), "same_response", "rejected",
         "equals 'chosen' (a comparison needs two different responses)")

    weight = np.ones(n)
    if "weight" in table.column_names:
        weight, bad, raw = _as_float(table.column("weight"), n)
        bad |= ~np.isfinite(weight) | (weight < 0)
        flag(bad, "bad_weight", "weight", "is not a finite non-negative number",
             raw=[r if r is not None else repr(w) for r, w in zip(raw, weight)])
        weight = np.where(bad, np.nan, weight)
    given = np.full(n, np.nan)
    if "support_rate" in table.column_names:
        given, bad, raw = _as_float(table.column("support_rate"), n)
        bad |= np.isfinite(given) & ((given < 0) | (given > 1))
        flag(bad, "bad_support_rate", "support_rate", "is not a number in [0, 1]",
             raw=[r if r is not None else repr(g) for r, g in zip(raw, given)])
    # Nulls become "" for hashing only; the rows are already flagged and keep their nulls.
    prompts, chosen, rejected = (pc.fill_null(columns[f], "")
                                 for f in ("prompt", "chosen", "rejected"))
    keys = row_keys(prompts, chosen, rejected)
    if "split" in table.column_names:
        split = _as_string(table.column("split")).to_numpy(zero_copy_only=False).astype(object)
        bad = ~np.isin(split, SPLITS)
        flag(bad, "bad_split", "split", f"is not one of {SPLITS}", raw=split)
    else:
        split = assign_split(keys["prompts"], split_seed, val_fraction, test_fraction)
    if first_bad:  # strict: the first bad row in file order, with its first problem
        raise _problem(table, *min(first_bad))
    optional = {}
    for name in ("user_type",):
        optional[name] = (_as_string(table.column(name)) if name in table.column_names
                          else pa.nulls(n, pa.string()))
    for name in ("margin", "utility_margin"):
        optional[name] = (pa.array(_as_float(table.column(name), n)[0])
                          if name in table.column_names else pa.nulls(n, pa.float64()))
    return pa.table({
        "row_id": table.column("row_id"), "source_file": table.column("source_file"),
        "source_row": table.column("source_row"),
        "user_id": columns["user_id"], "prompt": columns["prompt"],
        "chosen": columns["chosen"], "rejected": columns["rejected"],
        "weight": pa.array(weight, pa.float64()),
        "given_support": pa.array(given, pa.float64(), from_pandas=True),
        "split": pa.array(split, pa.string()),
        "user_type": optional["user_type"], "margin": optional["margin"],
        "utility_margin": optional["utility_margin"],
        "comparison_key": pa.array(keys["comparison_key"]),
        "chosen_is_first": pa.array(keys["chosen_is_first"], pa.bool_()),
        "chosen_text_id": pa.array(keys["chosen_text_id"]),
        "rejected_text_id": pa.array(keys["rejected_text_id"]),
        "set_aside_reason": pa.array(reason, pa.string()),
        "set_aside_detail": pa.array(detail, pa.string()),
    }, schema=CANONICAL)


def assign_split(prompts, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Split by prompt hash: every row of a prompt lands in the same split. ``prompts``:
    text (arrow or array-like) or its :class:`~pafo_ray.data.schema.Encoded` form."""
    from pafo_ray.data.schema import Encoded, column_hash, encode

    encoded = prompts if isinstance(prompts, Encoded) else encode(prompts)
    hashed = column_hash(encoded, hash_key=f"pafo{seed:012d}"[:16])
    u = (hashed % np.uint64(1_000_000)).astype(np.float64) / 1_000_000
    return np.where(u < test_fraction, "test",
                    np.where(u < test_fraction + val_fraction, "val", "train")).astype(object)
