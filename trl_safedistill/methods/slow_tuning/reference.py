r"""Slow tuning's reference weights (SLowED, arXiv 2508.09666): reading or downloading ``slow_tuning_reference``.

The reference ``W_ref`` (e.g. the model before safety alignment) gives two things, both per unit and matched by
tensor name:

* the unit ``U = ||W0 − W_ref||_F`` of ``slow_tuning_unit="reference"`` (drift ``d = ||Δ||_F / U``); a unit missing
  from the reference, or with a zero reference delta, is skipped or frozen (``slow_tuning_reference_missing``);
* the direction of rule ``direction``: ``D = W_aligned − W_ref``, kept on the layer's device in
  ``slow_tuning_direction_dtype``, as ``D̂ = D/||D||`` (full tensors, ``slow_tuning_direction_rank = 0``) or as
  the left basis ``U`` of its top-k singular subspace with ``D̂_k`` (LoRA always; full tensors with a rank > 0; see
  :mod:`.units`).

**Precision.** ``W_aligned`` is the anchor ``W0`` when it is held in full precision. A LoRA layer whose frozen base
is bitsandbytes 4-bit/8-bit holds NF4/int8 values whose rounding error (~10% of an element) dwarfs an alignment
delta (~0.2% of ``||W||``); for those layers ``W_aligned`` is read from the saved weights instead
(:func:`aligned_source`: ``aligned_weights``, default the student's own ``name_or_path``), in their saved dtype
(plus ``s·B0·A0`` when the adapter starts non-zero), and a quantized run without saved weights is refused.

``slow_tuning_reference`` is a ``.safetensors`` file, a folder of them, ``embedded-default`` or a hub id (its
``*.safetensors`` fetched once with ``huggingface_hub.snapshot_download``, cached); tensors are read lazily.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from .checkpoint import ANCHOR_FILE
from .units import _LoraUnit, _Unit, left_basis


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


def aligned_source(model: Any, path: str | None) -> _Reference | None:
    """The aligned weights in their saved precision: ``path`` (``aligned_weights``), else the model's own
    ``name_or_path`` when it is a local folder or file (or a cached hub id); None when neither can be read."""
    if path:
        return _Reference(path)
    config = getattr(model, "config", None)
    own = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if not own:
        return None
    try:
        return _Reference(str(own))
    except (FileNotFoundError, OSError):
        return None


def aligned_weight(u: _Unit, w0: torch.Tensor, aligned: _Reference | None) -> torch.Tensor:
    """``W_aligned`` of unit ``u`` in full precision (float32): the saved tensor for a LoRA layer on a quantized base
    (plus the adapter's start delta), else the in-memory anchor ``w0``.

    Raises ``ValueError`` for a quantized base whose saved weights are not available (the NF4/int8 copy is never
    used as the aligned weights).
    """
    if not (isinstance(u, _LoraUnit) and u.quantized):
        return w0
    name = reference_name(u)
    saved = aligned.get(name) if aligned is not None else None
    if saved is None or tuple(saved.shape) != tuple(w0.shape):
        raise ValueError(
            f"{u.name}: the base layer is quantized, so the aligned weights must be read in their saved precision, but "
            f"no tensor {name!r} of shape {tuple(w0.shape)} was found: set aligned_weights to the aligned model's folder "
            "or .safetensors file"
        )
    w = saved.to(w0.device).float()
    start = u.start_delta()
    return w + start.to(w.device) if start is not None else w


def reference_name(u: _Unit) -> str:
    """The tensor name of unit ``u`` in a plain checkpoint (LoRA ``layer[adapter]`` -> ``layer.weight``)."""
    return re.sub(r"\[[^\]]+\]$", "", u.name) + ".weight" if isinstance(u, _LoraUnit) else u.name


def attach_reference(u: _Unit, w0: torch.Tensor, reference: _Reference, rule: str, args: Any, set_norm: bool) -> int:
    """Match unit ``u`` (aligned weights ``w0``, full precision) to its reference tensor: set ``U`` and status
    (``set_norm``) and, for rule ``direction``, ``D̂`` or the left basis of ``D`` (``slow_tuning_direction_rank``).

    Returns 1 when the reference holds a tensor of the unit's name and shape, else 0.
    """
    ref = reference.get(reference_name(u))
    ok = ref is not None and tuple(ref.shape) == tuple(w0.shape)
    d = (w0 - ref.to(w0.device).float()) if ok else None
    d_norm = float(torch.linalg.vector_norm(d)) if ok else 0.0
    direction = None
    rank = getattr(args, "slow_tuning_direction_rank", 0)
    if rule == "direction" and d_norm > 0.0 and (isinstance(u, _LoraUnit) or rank > 0):
        basis, _ = left_basis(d, rank)
        direction = basis.T.to(d.device) @ d  # Uᵀ D = Uᵀ D_k (k×in)
        d_norm = float(torch.linalg.vector_norm(direction))  # ||D_k||: the unit of the undo budget
        if basis.shape[1] >= d.shape[0]:  # the whole column space: P = I, kept as the plain direction
            basis, direction = None, d
        else:
            u.basis = basis.to(device=d.device, dtype=getattr(torch, args.slow_tuning_direction_dtype))
    elif rule == "direction" and d_norm > 0.0:
        direction = d
    if set_norm:
        if d_norm > 0.0:
            u.unit_norm, u.status = d_norm, "constrained"
        else:
            policy = args.slow_tuning_reference_missing
            u.unit_norm, u.status = u.w0_norm or 1.0, ("frozen" if policy == "freeze" else "skip")
    if direction is not None:
        dtype = getattr(torch, args.slow_tuning_direction_dtype)
        direction = direction.to(dtype)
        u.direction = direction / torch.linalg.vector_norm(direction.float()).to(dtype)  # unit norm as stored
    return int(ok)
