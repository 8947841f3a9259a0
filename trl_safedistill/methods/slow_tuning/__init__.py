r"""Slow tuning (SLowED, arXiv 2508.09666): keep the trainable weights near their values at the start of training.

SLowED "scales down the magnitude of model weight changes to optimize the model weights in the neighboring
space near the initial weight distribution"; the exact rule is not published (OPEN). This project's choice is a
``TrainerCallback`` that, every ``slow_tuning_check_every`` optimizer steps, measures each layer's drift
``d = ||W − W0||_F / U`` from the anchor ``W0`` (the weights at the start of training) and holds it within the
epoch's budget ``β_e = slow_tuning_budget · slow_tuning_budget_growth**e``. One idea per module:

* :mod:`.units`: the units (LoRA ``W = W_base + s·B·A`` measured without forming ``B·A``; full tensors), their
  ``||Δ||_F`` (batched over LoRA layers) and how a delta is shrunk;
* :mod:`.rules`: the budget and the rules ``project``, ``scale``, ``direction`` applied at a check;
* :mod:`.reference`: ``slow_tuning_reference`` read from a file, folder or the hub (``U = ||W0 − W_ref||_F`` and
  the alignment direction ``D̂`` or subspace ``U`` of ``D = W_aligned − W_ref``, in saved precision);
* :mod:`.callback`: :class:`SlowTuningCallback` (anchor, per-step check, metrics, resume);
* :mod:`.checkpoint`: the anchor and state files written into each checkpoint for an exact resume;
* :mod:`.log`: the per-layer drift log ``{output_dir}/slow_tuning_drift.jsonl``.

Use: ``trainer.add_callback(SlowTuningCallback(config))`` (``SafeDistillTrainer`` does it when
``slow_tuning_rule`` is not ``off``).
"""

from __future__ import annotations

from .callback import PREFIX, SlowTuningCallback
from .checkpoint import ANCHOR_FILE, STATE_FILE
from .log import DRIFT_LOG_FILE
from .reference import _Reference as _Reference  # noqa: F401 - unit internals, for tests and benchmarks
from .reference import reference_location
from .rules import apply_rule, epoch_budget
from .units import _FullUnit as _FullUnit  # noqa: F401
from .units import _LoraUnit as _LoraUnit  # noqa: F401
from .units import _Unit as _Unit  # noqa: F401
from .units import canonical_name, delta_norms, discover_units

__all__ = [
    "ANCHOR_FILE",
    "DRIFT_LOG_FILE",
    "PREFIX",
    "STATE_FILE",
    "SlowTuningCallback",
    "apply_rule",
    "canonical_name",
    "delta_norms",
    "discover_units",
    "epoch_budget",
    "reference_location",
]
