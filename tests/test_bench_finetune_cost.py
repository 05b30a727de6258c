"""The fine-tuning cost benchmark trains for real: the weights move, the rate is positive, and
the run arithmetic follows from the rate."""

from __future__ import annotations

import re

import pytest
import torch


def test_step_rate_trains_the_backbone_and_main_does_the_arithmetic(capsys):
    from transformers import AutoModel, AutoTokenizer

    from benchmarks.finetune_cost import main, step_rate
    from pafo_ray.models.backbone import resolve_backbone

    path = resolve_backbone("builtin-tiny")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    before = [p.detach().clone() for p in model.parameters()]
    rate = step_rate(model, tokenizer, ["a short text", "another one here"] * 4, 16, 4, lr=1e-2)
    assert rate > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="at least 2 batches"):
        step_rate(model, tokenizer, ["one", "two"], 16, 4)

    assert main(["--backbone", "builtin-tiny", "--texts", "12", "--batch-size", "4",
                 "--max-length", "32", "--run-texts", "1000", "--models", "2",
                 "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    rate = float(re.search(r"([\d.]+) texts/s", out).group(1))
    epoch = float(re.search(r"1,000 texts: ([\d,]+) s", out).group(1).replace(",", ""))
    assert epoch == pytest.approx(1000 / rate, rel=0.02, abs=1)
    hours = float(re.search(r"2 models × 3 epochs: ([\d.]+) h", out).group(1))
    assert hours == pytest.approx(6 * 1000 / rate / 3600, abs=0.06)
