"""Slow tuning's checkpoint files (SLowED, arXiv 2508.09666): the anchor and the callback state, for resume.

A resumed run must measure drift against the same anchor ``W0`` as the interrupted one: re-anchoring at the
resumed weights would silently move the budget. So every checkpoint folder ``{output_dir}/checkpoint-{step}``
gets two files beside the trainer's own:

* :data:`ANCHOR_FILE` (safetensors): ``w0::<unit>`` for full tensors, ``a0::<unit>`` / ``b0::<unit>`` for LoRA
  units that started with ``B0 ≠ 0`` (LoRA units with ``B0 = 0`` need nothing: their anchor is the base layer);
* :data:`STATE_FILE` (JSON): the rule, each unit's ``w0_norm`` / ``unit_norm`` / ``status``, the counters,
  the per-check history and per-epoch records, and the metrics not yet logged.

The state is written after the anchor, so a folder with a state that parses has both
(:mod:`trl_safedistill.checkpoints` reads completeness from that order).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

ANCHOR_FILE = "slow_tuning_anchor.safetensors"
STATE_FILE = "slow_tuning_state.json"


def has_state(directory: str) -> bool:
    """Whether ``directory`` holds a slow-tuning state (it was saved by a run with slow tuning on)."""
    return os.path.isfile(os.path.join(directory, STATE_FILE))


def write_checkpoint(directory: str, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write the anchor ``tensors`` and the JSON ``state`` into ``directory`` (created if needed)."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, ANCHOR_FILE))
    with open(os.path.join(directory, STATE_FILE), "w") as fh:
        json.dump(state, fh)


def read_checkpoint(directory: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(state, anchor tensors)`` as written by :func:`write_checkpoint`."""
    from safetensors.torch import load_file

    with open(os.path.join(directory, STATE_FILE)) as fh:
        state = json.load(fh)
    return state, load_file(os.path.join(directory, ANCHOR_FILE))
