r"""Safe LoRA (Hsu et al., arXiv 2405.16833, NeurIPS 2024): a post-hoc projection of the LoRA update, as a baseline.

From the paper's method (section 3, "Safe LoRA"; figure 1) and its released code (IBM/SafeLoRA, also in peft as
``peft.utils.safelora``): for every LoRA layer, the alignment matrix ``V = W_aligned − W_unaligned`` (e.g. chat minus
base weights) gives ``C`` (:mod:`.alignment`: the paper's ``Ĉ = V·Vᵀ/||V||_F``, or the exact projector). With the
LoRA update ``ΔW = B·A``, the layer's similarity is

    cos = <C·B·A, B·A> / (||C·B·A||_F · ||B·A||_F)

and a layer with ``cos <= τ`` (``safe_lora_threshold``; ``<=`` as in the released code) gets ``B ← C·B``; the other
layers keep their adapter. ``safe_lora_num_layers = n > 0`` projects the n layers of lowest similarity instead (the
code's ``select_layers_type="number"``). It is training-free and data-free; this project applies it in
``on_train_end``, i.e. after the last optimizer step and before ``trainer.save_model()`` writes the adapter (the
intermediate checkpoints stay unprojected). The similarity is computed from r×r Gram matrices, never forming ``B·A``:
``<C·B·A, B·A> = tr((C·B)ᵀ·B · A·Aᵀ)``. For transposed layers (embeddings, ``fan_in_fan_out``) the roles of the
factors follow W's orientation (:meth:`~.slow_tuning.units._LoraUnit._factors`).

Open details, this project's choices: a zero ``B·A`` has similarity 1 (nothing to project); a zero ``V`` leaves the
layer alone; the LoRA scaling ``s`` cancels in ``cos`` and is kept on the projected factor. The per-layer similarities
and choices go to ``{output_dir}/safe_lora.json`` (:data:`REPORT_FILE`).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch
from transformers import TrainerCallback

from .alignment import LayerProjection, apply_c, layer_projections

logger = logging.getLogger(__name__)

REPORT_FILE = "safe_lora.json"


@torch.no_grad()
def similarity(left: torch.Tensor, projected: torch.Tensor, right: torch.Tensor) -> float:
    """Cosine similarity of ``projected·R`` and ``left·R`` (flattened), from r×r Gram matrices (float64)."""
    left, projected, right = left.double(), projected.double(), right.double()
    gram_r = right @ right.T
    inner = float(((projected.T @ left) * gram_r).sum())
    norm_p = float(((projected.T @ projected) * gram_r).sum())
    norm_o = float(((left.T @ left) * gram_r).sum())
    if norm_o <= 0.0:
        return 1.0
    if norm_p <= 0.0:
        return 0.0
    return inner / math.sqrt(norm_p * norm_o)


def select_layers(similarities: list[float], threshold: float, num_layers: int = 0) -> list[bool]:
    """Which layers to project: ``cos <= threshold``, or (``num_layers > 0``) the ``num_layers`` lowest similarities."""
    if num_layers > 0:
        order = sorted(range(len(similarities)), key=lambda i: similarities[i])[:num_layers]
        chosen = set(order)
        return [i in chosen for i in range(len(similarities))]
    return [s <= threshold for s in similarities]


@torch.no_grad()
def project_layers(layers: list[LayerProjection], threshold: float, num_layers: int = 0) -> list[dict[str, Any]]:
    """Apply Safe LoRA to ``layers`` in place; returns one record a layer (name, similarity, projected)."""
    sims: list[float] = []
    projected: list[torch.Tensor | None] = []
    for layer in layers:
        left, right = layer.factors()
        if layer.basis is None:
            sims.append(1.0)
            projected.append(None)
            continue
        new_left = apply_c(left.float(), layer.basis.float(), layer.weights.float())
        sims.append(similarity(left, new_left, right))
        projected.append(new_left)
    chosen = select_layers(sims, threshold, num_layers)
    records = []
    for layer, sim, new_left, choose in zip(layers, sims, projected, chosen):
        choose = bool(choose and new_left is not None)
        if choose:
            unit = layer.unit
            if unit.transpose:
                unit.A.copy_(new_left.T.to(unit.A.dtype))
            else:
                unit.B.copy_(new_left.to(unit.B.dtype))
        records.append({"layer": layer.unit.name, "similarity": sim, "projected": choose})
    return records


class SafeLoraCallback(TrainerCallback):
    """Safe LoRA at the end of training (``on_train_end``, before the adapter is saved); see the module docstring.

    Args:
        args: a ``SafeDistillConfig`` (or :class:`~.arguments.SLowEDArguments`) with ``safe_lora_*`` fields.
    """

    def __init__(self, args: Any):
        self.args = args
        self.records: list[dict[str, Any]] = []

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("SafeLoraCallback needs the model in on_train_end")
        a = self.args
        layers = layer_projections(model, a.safe_lora_reference, a.aligned_weights, a.safe_lora_projection, "safe_lora")
        self.records = project_layers(layers, a.safe_lora_threshold, a.safe_lora_num_layers)
        count = sum(r["projected"] for r in self.records)
        logger.info("safe_lora: projected %d of %d LoRA layers", count, len(self.records))
        if getattr(state, "is_world_process_zero", True) and getattr(args, "output_dir", None):
            from ..atomic import write_json

            write_json(os.path.join(args.output_dir, REPORT_FILE), {
                "threshold": a.safe_lora_threshold, "num_layers": a.safe_lora_num_layers,
                "projection": a.safe_lora_projection, "projected": count, "layers": self.records,
            })
