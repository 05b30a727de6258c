"""Reward models: backbone (φ), heads (r = head(φ, e_u)) and the saved RewardModel.

Names load on first use, so ``import pafo_ray.models`` stays cheap; transformers is imported
only when a backbone is built or loaded.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BackboneError": "backbone",
    "TextEncoder": "backbone",
    "build_tiny_backbone": "backbone",
    "pool": "backbone",
    "resolve_backbone": "backbone",
    "RewardHead": "heads",
    "RewardModel": "reward_model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
