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
