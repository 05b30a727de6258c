"""Keys and text ids: the arrow/categorical fast path equals pandas' plain object hashing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from pafo_ray.data.schema import comparison_keys, text_ids
from pafo_ray.data.validate import assign_split

WORDS = ["a", "b", "é", "日本", "", "ß", "a b", "Ab", "ab", "\u00e9\u0301"]


def _plain_hash(*columns) -> np.ndarray:
    """The definition: pandas' SipHash of the object columns, combined per row."""
    frame = pd.DataFrame({f"c{i}": pd.array(np.asarray(c, dtype=object), dtype=object)
                          for i, c in enumerate(columns)})
    return pd.util.hash_pandas_object(frame, index=False).to_numpy().view(np.int64)


def _texts(n, seed):
    rng = np.random.default_rng(seed)
    return [WORDS[i] + WORDS[j] for i, j in rng.integers(0, len(WORDS), (n, 2))]


def test_text_ids_equal_the_plain_hash_for_arrow_and_python_input():
    prompts, responses = _texts(500, 0), _texts(500, 1)
    want = _plain_hash(prompts, responses)
    assert (text_ids(prompts, responses) == want).all()
    assert (text_ids(pa.array(prompts), pa.chunked_array([responses[:200], responses[200:]]))
            == want).all()
    assert len(np.unique(want)) == len({(p, r) for p, r in zip(prompts, responses)})


def test_comparison_keys_ignore_the_vote_direction_and_order_like_python():
    prompts, x, y = _texts(400, 2), _texts(400, 3), _texts(400, 4)
    key, first = comparison_keys(prompts, x, y)
    key_flipped, first_flipped = comparison_keys(pa.array(prompts), pa.array(y), pa.array(x))
    assert (key == key_flipped).all()
    differ = np.array([a != b for a, b in zip(x, y)])
    assert (first[differ] == ~first_flipped[differ]).all()
    assert first.tolist() == [a < b for a, b in zip(x, y)]  # Python's str order
    low = [min(a, b) for a, b in zip(x, y)]
    high = [max(a, b) for a, b in zip(x, y)]
    assert (key == _plain_hash(prompts, low, high)).all()


def test_split_of_a_prompt_is_its_seeded_hash():
    prompts = _texts(300, 5)
    split = assign_split(pa.array(prompts), 7, 0.2, 0.1)
    hashed = pd.util.hash_array(np.asarray(prompts, dtype=object), hash_key="pafo000000000007")
    u = (hashed % np.uint64(1_000_000)).astype(np.float64) / 1_000_000
    want = np.where(u < 0.1, "test", np.where(u < 0.3, "val", "train"))
    assert split.tolist() == want.tolist()
    assert assign_split(prompts, 8, 0.2, 0.1).tolist() != split.tolist()  # the seed matters
