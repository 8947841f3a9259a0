"""SLowED (arXiv 2508.09666): low-entropy masking and slow tuning, as modules SafeDistillTrainer calls.

* :class:`~.arguments.SLowEDArguments`: every config field of both methods (SafeDistillConfig inherits it);
* :func:`~.entropy_mask.low_entropy_keep_mask`: which target tokens stay in the loss;
* :class:`~.slow_tuning.SlowTuningCallback`: keeps each layer's drift from its start-of-training weights in a budget;
* :func:`~.plots.plot_slowed`: PNG of drift and masked fraction per epoch from the training logs;
* :class:`~.safe_lora.SafeLoraCallback` and :class:`~.asft.AsftCallback`: the Safe LoRA and AsFT baselines;
  :func:`baseline_callbacks` builds those a config turns on.

Only the arguments are imported eagerly (no torch/transformers import for config parsing).
"""

from __future__ import annotations

from .arguments import SLowEDArguments, validate_slowed_arguments

_LAZY = {
    "low_entropy_keep_mask": "trl_safedistill.methods.entropy_mask",
    "SlowTuningCallback": "trl_safedistill.methods.slow_tuning",
    "plot_slowed": "trl_safedistill.methods.plots",
    "SafeLoraCallback": "trl_safedistill.methods.safe_lora",
    "AsftCallback": "trl_safedistill.methods.asft",
}


def baseline_callbacks(args: SLowEDArguments) -> list:
    """The callbacks of the safety baselines ``args`` turns on (``safe_lora``, ``asft``), in that order."""
    callbacks = []
    if args.safe_lora:
        from .safe_lora import SafeLoraCallback

        callbacks.append(SafeLoraCallback(args))
    if args.asft:
        from .asft import AsftCallback

        callbacks.append(AsftCallback(args))
    return callbacks


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trl_safedistill.methods' has no attribute {name!r}")


__all__ = ["SLowEDArguments", "baseline_callbacks", "validate_slowed_arguments", *sorted(_LAZY)]
