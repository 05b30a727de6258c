"""The transformers floor in pyproject.toml is the version the code needs.

models/backbone.py loads with ``AutoModel.from_pretrained(..., dtype=torch.float32)``; the
``dtype`` keyword exists from 4.56.0 (4.55 popped only ``torch_dtype`` and passed ``dtype`` on
to the model's config, where it was ignored). Verified by reading both wheels'
``modeling_utils.py`` (``pip download transformers==4.55.4 / 4.56.0 --no-deps``).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _floor() -> tuple:
    text = (REPO / "pyproject.toml").read_text()
    found = re.search(r'"transformers>=([0-9.]+)"', text)
    assert found, "pyproject.toml must pin a transformers floor"
    return tuple(int(x) for x in found.group(1).split("."))


def test_the_floor_admits_no_version_without_from_pretrained_dtype():
    assert _floor() >= (4, 56)


def test_the_installed_transformers_reads_the_dtype_keyword():
    import transformers
    from transformers import PreTrainedModel

    installed = tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    assert installed >= _floor()[:2]
    source = inspect.getsource(PreTrainedModel.from_pretrained)
    assert 'kwargs.pop("dtype"' in source


def test_the_code_uses_the_dtype_keyword():
    source = (REPO / "pafo_ray" / "models" / "backbone.py").read_text()
    assert "dtype=torch.float32" in source and "torch_dtype" not in source
