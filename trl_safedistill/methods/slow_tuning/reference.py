r"""Slow tuning's reference weights (SLowED, arXiv 2508.09666): reading or downloading ``slow_tuning_reference``.

The reference ``W_ref`` (e.g. the model before safety alignment) gives two things, both per unit and matched by
tensor name:

* the unit ``U = ||W0 − W_ref||_F`` of ``slow_tuning_unit="reference"`` (drift ``d = ||Δ||_F / U``); a unit missing
  from the reference, or with a zero reference delta, is skipped or frozen (``slow_tuning_reference_missing``);
* the direction of rule ``direction``: ``D̂ = D/||D||`` with ``D = W0 − W_ref``, kept on the layer's device in
  ``slow_tuning_direction_dtype``. Under 4-bit quantisation ``D`` is measured against the dequantized base and
  contains its quantisation error.

``slow_tuning_reference`` is a ``.safetensors`` file, a folder of them, ``embedded-default`` or a hub id (its
``*.safetensors`` fetched once with ``huggingface_hub.snapshot_download``, cached); tensors are read lazily.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from .checkpoint import ANCHOR_FILE
from .units import _LoraUnit, _Unit


def reference_location(name_or_path: str) -> str:
    """A local file or folder for ``slow_tuning_reference``: a path as is, ``embedded-default`` converted, else a hub
    model id, whose ``*.safetensors`` files are fetched with ``huggingface_hub.snapshot_download`` (cached)."""
    from ...models import resolve_model_path

    path = resolve_model_path(name_or_path)
    if os.path.exists(path):
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, allow_patterns=["*.safetensors", "*.json"])
    except Exception as error:  # offline, unknown id, gated model
        raise FileNotFoundError(
            f"slow_tuning_reference={name_or_path!r} is neither a local file or folder nor a downloadable hub model "
            f"({type(error).__name__}: {error})"
        ) from error


class _Reference:
    """Lazy name-matched access to reference weights in safetensors files (a path, or a hub id: see
    :func:`reference_location`)."""

    def __init__(self, path: str):
        from safetensors import safe_open

        path = reference_location(path)
        if os.path.isfile(path):
            files = [path]
        else:
            files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
            files = [f for f in files if os.path.basename(f) != ANCHOR_FILE]
        if not files:
            raise FileNotFoundError(f"slow_tuning_reference: no .safetensors file in {path}")
        self._handles = [safe_open(f, framework="pt") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}

    def get(self, name: str) -> torch.Tensor | None:
        for key in (name, f"model.{name}", name.removeprefix("model.")):
            if key in self._where:
                return self._where[key].get_tensor(key)
        return None


def uses_reference(rule: str, args: Any) -> bool:
    """Whether ``rule`` with ``args`` reads the reference: rule ``direction``, or ``slow_tuning_unit="reference"``."""
    return rule == "direction" or (rule != "off" and args.slow_tuning_unit == "reference")


def attach_reference(u: _Unit, w0: torch.Tensor, reference: _Reference, rule: str, args: Any, set_norm: bool) -> int:
    """Match unit ``u`` (anchor ``w0``) to its reference tensor: set ``U`` and status (``set_norm``) and ``D̂``.

    Returns 1 when the reference holds a tensor of the unit's name and shape, else 0.
    """
    ref_name = re.sub(r"\[[^\]]+\]$", "", u.name) + ".weight" if isinstance(u, _LoraUnit) else u.name
    ref = reference.get(ref_name)
    ok = ref is not None and tuple(ref.shape) == tuple(w0.shape)
    d = (w0 - ref.to(w0.device).float()) if ok else None
    d_norm = float(torch.linalg.vector_norm(d)) if ok else 0.0
    if set_norm:
        if d_norm > 0.0:
            u.unit_norm, u.status = d_norm, "constrained"
        else:
            policy = args.slow_tuning_reference_missing
            u.unit_norm, u.status = u.w0_norm or 1.0, ("frozen" if policy == "freeze" else "skip")
    if rule == "direction" and d_norm > 0.0:
        dtype = getattr(torch, args.slow_tuning_direction_dtype)
        direction = d.to(dtype)
        u.direction = direction / torch.linalg.vector_norm(direction.float()).to(dtype)  # unit norm as stored
    return int(ok)

