"""trl-safedistill: chain-of-thought distillation into small students without losing their safety."""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "SafeDistillConfig": "trl_safedistill.config",
    "SafeDistillTrainer": "trl_safedistill.trainer",
    "RationaleRecord": "trl_safedistill.records",
    "load_jsonl": "trl_safedistill.records",
    "get_format": "trl_safedistill.formats",
    "build_dataset": "trl_safedistill.dataset",
}


def __getattr__(name: str):
    """Import the public API lazily (the trainer pulls in torch, TRL and transformers)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trl_safedistill' has no attribute {name!r}")


__all__ = sorted(_LAZY)
