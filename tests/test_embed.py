"""The embed stage's actor, in this process (no Ray): threads from its CPUs, rows in order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from pafo_ray.admission import actor_threads
from pafo_ray.models import TextEncoder
from pafo_ray.stages.embed import Embedder


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("cpus", [1.0, 2.0, 7.0])
def test_the_actor_uses_as_many_threads_as_its_cpus(cpus, keep_threads):
    embedder = Embedder("builtin-tiny", "auto", 32, "{prompt}\n\n{response}", "cpu", cpus=cpus)
    assert embedder.threads == torch.get_num_threads() == actor_threads(cpus)
    assert embedder.threads == min(int(cpus), len(__import__("os").sched_getaffinity(0)))


def test_the_actor_returns_its_block_in_order_with_exact_truncation_flags(keep_threads):
    prompts = ["how are you", "tell me a story", "why", "what is the best way"]
    responses = ["fine", "once upon a time " * 12, "because", "the best way is to ask"]
    block = pa.table({"text_id": pa.array([40, 10, 30, 20], pa.int64()),
                      "prompt": prompts, "response": responses})
    embedder = Embedder("builtin-tiny", "auto", 24, "{prompt}\n\n{response}", "cpu",
                        cpus=1.0, batch_size=2)
    out = embedder(block)
    assert out.column("text_id").to_pylist() == [40, 10, 30, 20]
    assert out.column("truncated").to_pylist() == [False, True, False, False]
    vectors = np.array(out.column("embedding").to_pylist(), dtype=np.float32)
    encoder = TextEncoder("builtin-tiny", max_length=24)
    one_by_one = np.concatenate([encoder.embed([p], [r]) for p, r in zip(prompts, responses)])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)


def test_finetune_margins_by_length_equal_the_padded_token_path(tmp_path):
    """MarginScorer in finetune mode (texts through the backbone, batched by length) gives the
    margins of the plain padded path, row for row."""
    import pandas as pd

    from pafo_ray.config import load_config
    from pafo_ray.models import RewardModel
    from pafo_ray.scoring import MarginScorer
    from pafo_ray.train.loop import PairScorer

    cfg = load_config(None, ["model.mode=finetune", "model.max_length=32",
                             f"run.storage_path={tmp_path}"])
    model = RewardModel.from_config(cfg.model, ["u1", "u2"])
    torch.manual_seed(0)
    torch.nn.init.normal_(model.head.user_embedding.weight)
    model.save_pretrained(tmp_path / "m")
    batch = pd.DataFrame({"user_id": ["u1", "u2", "u1", "new"],
                          "prompt": ["why", "how are you", "tell me", "what"],
                          "chosen": ["because " * 9, "fine", "a long story " * 4, "this"],
                          "rejected": ["no", "not well at all " * 3, "no", "that one"]})
    got = MarginScorer({"m": str(tmp_path / "m")}, cfg.to_dict())(batch.copy())
    model.eval()
    enc, users = model.encoder, model.user_index(batch["user_id"])
    with torch.no_grad():  # each side padded to its longest text, in the rows' order
        phi = [enc(**enc.tokenize(list(batch["prompt"]), list(batch[side])))
               for side in ("chosen", "rejected")]
        expected = PairScorer(model)(users, chosen_phi=phi[0], rejected_phi=phi[1]).numpy()
    np.testing.assert_allclose(got["m"].to_numpy(), expected, atol=1e-5)
    assert np.ptp(expected) > 1e-3  # the rows' margins differ: a shuffle would show
    assert got["m_unknown_user"].tolist() == [False, False, False, True]
