r"""The alignment matrix of each LoRA layer and its projection C, shared by Safe LoRA and AsFT.

Both baselines start from the per-layer alignment matrix ``V = W_aligned − W_unaligned`` (Safe LoRA, arXiv
2405.16833, section 3; AsFT, arXiv 2506.08473, which takes its "alignment direction" from Safe LoRA) and a matrix
``C`` acting on the left of the LoRA update ``ΔW = B·A``:

* ``approximate`` (the papers' ``Ĉ = V·Vᵀ / ||V||_F``, as in both released codes): with ``V = U·Σ·Wᵀ``,
  ``Ĉ = U·diag(σ_i² / ||V||_F)·Uᵀ``. It is not a projector: its eigenvalues ``σ_i²/||V||_F`` depend on the size of
  the alignment delta, so for a small delta (an alignment of ~0.2% of ``||W||``) ``Ĉ ≈ 0``.
* ``exact``: the orthogonal projector ``U·Uᵀ`` onto V's column space (numerical rank, :func:`left_basis`), the
  paper's exact ``V(VᵀV)⁻¹Vᵀ`` for a low-rank V.

Either is stored as ``(U, g)`` with ``C = U·diag(g)·Uᵀ`` (out×k and k numbers a layer; k = V's numerical rank), so
``C·L`` costs ``O(out·k·r)`` and no out×out matrix is formed. Singular values below ``RANK_RTOL·σ_max`` are dropped;
in ``approximate`` they would contribute at most ``1e-8`` relative.

Both weights are read from their saved files in their saved precision (:func:`~.slow_tuning.reference.aligned_source`;
for an unquantized base whose files cannot be found the in-memory base weight is the aligned one); a quantized base
without saved aligned weights is refused, as is a model without LoRA layers (full fine-tuning has no ``B·A`` to
project or penalise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .slow_tuning.reference import _Reference, aligned_source, reference_name
from .slow_tuning.units import _LoraUnit, discover_units, left_basis


@dataclass
class LayerProjection:
    """One LoRA layer with ``C = U·diag(g)·Uᵀ`` of its alignment matrix (``U`` None when V is zero)."""

    unit: _LoraUnit
    basis: torch.Tensor | None
    weights: torch.Tensor | None

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, R): the live LoRA factors with ``L·R = B·A`` oriented like W (``L = Aᵀ, R = Bᵀ`` when transposed)."""
        return self.unit._factors(self.unit.B, self.unit.A)


def projection_from_delta(v: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, g)`` with ``C = U·diag(g)·Uᵀ``: ``approximate`` ``g = σ²/||V||_F``, ``exact`` ``g = 1``."""
    basis, sigma = left_basis(v, 0)
    if mode == "exact":
        return basis, torch.ones_like(sigma)
    if mode != "approximate":
        raise ValueError(f"projection must be 'approximate' or 'exact', got {mode!r}")
    return basis, sigma**2 / torch.linalg.vector_norm(v.double()).float()


def apply_c(left: torch.Tensor, basis: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``C·L = U·(g ∘ (Uᵀ·L))`` without forming C."""
    return basis @ (weights[:, None] * (basis.T @ left))


@torch.no_grad()
def layer_projections(model: Any, unaligned: str, aligned: str | None, mode: str, what: str) -> list[LayerProjection]:
    """``C`` of every trainable LoRA layer of ``model``, from ``V = W_aligned − W_unaligned`` in saved precision.

    ``what`` names the method in error messages (``safe_lora`` / ``asft``). A layer absent from the unaligned weights
    raises: both methods are defined on every adapted layer.
    """
    units, full = discover_units(model)
    if not units:
        raise ValueError(f"{what} acts on LoRA adapters (W = W_base + s·B·A) and this model has none: train with LoRA or "
                         "QLoRA, or use slow_tuning_rule: direction for full fine-tuning")
    reference = _Reference(unaligned)
    saved = aligned_source(model, aligned)
    layers: list[LayerProjection] = []
    for u in units:
        name = reference_name(u)
        base = u.layer.get_base_layer().weight
        w_aligned = saved.get(name) if saved is not None else None
        if w_aligned is None:
            if u.quantized:
                raise ValueError(f"{what}: {u.name} sits on a quantized base and the aligned weights {name!r} were not "
                                 "found in their saved precision: set aligned_weights to the aligned model's folder")
            w_aligned = base.detach()
        w_unaligned = reference.get(name)
        if w_unaligned is None or tuple(w_unaligned.shape) != tuple(w_aligned.shape):
            raise ValueError(f"{what}_reference={unaligned!r} holds no tensor {name!r} of shape {tuple(w_aligned.shape)}")
        v = w_aligned.float().to(base.device) - w_unaligned.float().to(base.device)
        if not bool(v.any()):
            layers.append(LayerProjection(u, None, None))
            continue
        basis, weights = projection_from_delta(v, mode)
        layers.append(LayerProjection(u, basis.to(base.device), weights.to(base.device)))
        del v
    return layers
