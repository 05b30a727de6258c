"""The built-in synthetic dataset: determinism, counts, splits, raters, labels, texts."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pafo_ray.config import GeneratorConfig
from pafo_ray.data import generate

# 300 prompts: 45 val, 45 test, 210 train; 6 pairs each -> 6 * (210*3 + 90*8) = 8100 rows.
SMALL = GeneratorConfig(num_users=200, num_prompts=300, responses_per_prompt=4, raters_train=3,
                        raters_eval=8, label_beta=None, minority_fraction=0.2, seed=7)


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return generate.generate_table(SMALL)


@pytest.fixture(scope="module")
def frame(table):
    return table.to_pandas()


def decode_attributes(text: str, k: int) -> np.ndarray:
    """Attribute values [k] read back from the wording (exactly one phrase per non-zero level)."""
    values = np.zeros(k)
    for attribute in range(k):
        found = [level for level in range(len(generate.LEVEL_VALUES)) if level != 2
                 for phrase in generate.PHRASES[attribute, level] if phrase in text]
        assert len(found) <= 1, (text, attribute, found)
        values[attribute] = generate.LEVEL_VALUES[found[0]] if found else 0.0
    return values


def test_columns_and_types(table):
    assert table.column_names == ["user_id", "prompt", "chosen", "rejected", "split",
                                  "user_type", "utility_margin"]
    assert table.schema.field("utility_margin").type == pa.float64()
    assert all(table.schema.field(c).type == pa.string() for c in table.column_names[:-1])
    assert re.fullmatch(r"u\d{6}", table.column("user_id")[0].as_py())


def test_row_count_formula(table):
    assert table.num_rows == generate.estimate_rows(SMALL) == 6 * (210 * 3 + 90 * 8) == 8100
    fewer = dataclasses.replace(SMALL, responses_per_prompt=5, pairs_per_prompt=2)
    subset = generate.generate_table(fewer).to_pandas()
    assert len(subset) == generate.estimate_rows(fewer) == 2 * (210 * 3 + 90 * 8)
    pairs = subset.assign(pair=[frozenset(p) for p in zip(subset.chosen, subset.rejected)])
    assert (pairs.groupby("prompt").pair.nunique() == 2).all()


def test_deterministic_by_seed(table):
    assert generate.generate_table(SMALL).equals(table)
    other = generate.generate_table(dataclasses.replace(SMALL, seed=8))
    assert not other.equals(table)
    assert set(other.column("prompt").to_pylist()) != set(table.column("prompt").to_pylist())
    # The file size is a storage knob: it does not change the data.
    assert generate.generate_table(dataclasses.replace(SMALL, rows_per_file=17)).equals(table)


def test_splits_disjoint_by_prompt_with_exact_fractions(frame):
    prompt_splits = frame.groupby("prompt").split.nunique()
    assert (prompt_splits == 1).all()
    counts = frame.drop_duplicates("prompt").split.value_counts()
    assert counts.to_dict() == {"train": 210, "val": 45, "test": 45}


def test_raters_per_comparison_are_exact_and_distinct(frame):
    pair = [frozenset(p) for p in zip(frame.chosen, frame.rejected)]
    by_comparison = frame.assign(pair=pair).groupby(["prompt", "pair"])
    raters = by_comparison.user_id.agg(["size", "nunique"])
    split = by_comparison.split.first()
    assert (raters["size"] == raters["nunique"]).all()
    assert (raters["size"][split == "train"] == 3).all()
    assert (raters["size"][split != "train"] == 8).all()
    assert len(raters) == 300 * 6


def test_every_user_has_eval_rows_and_a_type(frame):
    evaluated = frame[frame.split != "train"]
    assert evaluated.user_id.nunique() == SMALL.num_users
    types = frame.groupby("user_id").user_type.nunique()
    assert (types == 1).all()
    users = generate.generator_users(SMALL)
    assert users.is_minority.sum() == 40  # round(0.2 * 200)
    ids = users.user_ids.to_pylist()
    truth = {ids[i]: "minority" if m else "majority" for i, m in enumerate(users.is_minority)}
    assert (frame.user_type == frame.user_id.map(truth)).all()
    ground_truth = users.to_table()
    assert ground_truth.column_names == ["user_id", "user_type", "weight_formality",
                                         "weight_humour", "weight_detail", "weight_caution"]
    weights = np.column_stack([ground_truth.column(c).to_numpy() for c in ground_truth.column_names[2:]])
    np.testing.assert_allclose(np.abs(weights).sum(1), 1.0)  # signed Dirichlet: |w| sums to 1


def test_chosen_differs_and_deterministic_labels_are_positive(frame):
    assert (frame.chosen != frame.rejected).all()
    assert (frame.utility_margin > 0).all()


def test_bradley_terry_labels_are_mostly_but_not_always_right():
    noisy = generate.generate_table(dataclasses.replace(SMALL, label_beta=5.0)).to_pandas()
    right = (noisy.utility_margin > 0).mean()
    assert 0.5 < right < 1.0
    sharper = generate.generate_table(dataclasses.replace(SMALL, label_beta=50.0)).to_pandas()
    assert (sharper.utility_margin > 0).mean() > right


def test_wording_carries_the_utility_and_the_modes_disagree(frame):
    """Decode each text's attributes; the margin must be w_user · (a_chosen − a_rejected)."""
    k = SMALL.num_attributes
    texts = {t: decode_attributes(t, k) for t in set(frame.chosen) | set(frame.rejected)}
    difference = np.stack([texts[c] - texts[r] for c, r in zip(frame.chosen, frame.rejected)])
    users = generate.generator_users(SMALL)
    index = {uid: i for i, uid in enumerate(users.user_ids.to_pylist())}
    weights = users.weights[frame.user_id.map(index).to_numpy()]
    np.testing.assert_allclose((weights * difference).sum(1), frame.utility_margin, atol=1e-12)

    majority = generate.MAJORITY_MODE[:k] / np.abs(generate.MAJORITY_MODE[:k]).sum()
    minority = generate.MINORITY_MODE[:k] / np.abs(generate.MINORITY_MODE[:k]).sum()
    comparisons = np.unique(np.round(difference, 6), axis=0)
    disagree = np.sign(comparisons @ majority) != np.sign(comparisons @ minority)
    assert 0.2 < disagree.mean() < 0.8
    # Majority-type raters side with the majority mode more often than minority-type raters.
    with_majority = np.sign(difference @ majority) > 0
    is_minority = (frame.user_type == "minority").to_numpy()
    assert with_majority[~is_minority].mean() > with_majority[is_minority].mean() + 0.2


@pytest.mark.parametrize("attributes, responses", [(8, 8), (2, 25)])  # 25 = every 2-level vector
def test_responses_of_a_prompt_are_distinct(attributes, responses):
    cfg = dataclasses.replace(SMALL, num_attributes=attributes, responses_per_prompt=responses,
                              num_prompts=20, raters_train=1, raters_eval=1)
    frame = generate.generate_table(cfg).to_pandas()
    texts = frame.melt(id_vars="prompt", value_vars=["chosen", "rejected"]).drop_duplicates()
    assert (texts.groupby("prompt").value.nunique() == responses).all()
    assert (frame.utility_margin > 0).all()


def test_vocabulary_covers_every_emitted_word(table):
    vocabulary = generate.vocabulary()
    assert vocabulary == sorted(set(vocabulary)) and all(w == w.lower() for w in vocabulary)
    emitted = set()
    for column in ("prompt", "chosen", "rejected"):
        for text in set(table.column(column).to_pylist()):
            emitted.update(re.findall(generate.TOKEN_PATTERN, text.lower()))
    assert emitted <= set(vocabulary)
    assert {"formal", "pun", "exhaustive", "jargon"} <= set(vocabulary)


def test_write_generated_files_equal_the_table(tmp_path, table):
    (tmp_path / "part-00099.parquet").write_bytes(b"stale part of an earlier run")
    cfg = dataclasses.replace(SMALL, rows_per_file=1000)
    paths = generate.write_generated(cfg, str(tmp_path))
    assert len(paths) == 9  # ceil(8100 / 1000)
    assert sorted(str(p) for p in tmp_path.iterdir()) == sorted(paths)
    parts = [pq.read_table(p) for p in paths]
    assert all(part.num_rows <= 1000 for part in parts)
    assert pa.concat_tables(parts).equals(table)


def test_write_generated_spans_several_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "ROWS_PER_BLOCK", 500)  # blocks of 10 prompts
    cfg = dataclasses.replace(SMALL, rows_per_file=700)
    paths = generate.write_generated(cfg, str(tmp_path))
    assert pa.concat_tables([pq.read_table(p) for p in paths]).equals(generate.generate_table(cfg))


@pytest.mark.parametrize("field, value, message", [
    ("num_attributes", 9, "generator.num_attributes"),
    ("raters_eval", 500, "generator.num_users"),
    ("pairs_per_prompt", 7, "generator.pairs_per_prompt"),
    ("val_fraction", 0.9, "generator.test_fraction"),
    ("label_beta", 0.0, "generator.label_beta"),
])
def test_bad_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        generate.generate_table(dataclasses.replace(SMALL, **{field: value}))
