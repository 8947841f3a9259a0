r"""AsFT (Yang et al., arXiv 2506.08473, AAAI 2026): anchor the LoRA update to the alignment direction, as a baseline.

AsFT observes that perturbations along the alignment direction (the weight difference of aligned and unaligned
models) keep safety while orthogonal ones erode it (the "narrow safety basin"), and adds a regulariser that penalises
the update's component orthogonal to the alignment direction (abstract and method section, "Anchoring Safety in
Fine-Tuning"). Only the abstract and the released code (PKU-YuanGroup/AsFT, ``utils/AsFT_train_utils.py`` and
``AsFT_finetuning.py``) could be read for this implementation; the full text of the method section was not
available here, so the formula follows the code:

    L = L_task + λ · Σ_layers ||(I − Ĉ)·ΔW||_F²,     ΔW = B·A,   Ĉ = V·Vᵀ/||V||_F,   V = W_aligned − W_unaligned

(``Ĉ`` is Safe LoRA's, :mod:`.alignment`; the code builds it with Safe LoRA's class). Choices for the open details,
each a documented field:

* ``asft_lambda`` = λ (the released script uses 1);
* ``asft_projection``: ``approximate`` = the code's ``Ĉ`` (not a projector; for a small alignment delta ``Ĉ ≈ 0`` and
  the penalty approaches ``λ·||ΔW||²``, a plain weight decay of the update), ``exact`` = the orthogonal projector
  ``P`` onto V's column space, with which the gradient with respect to ΔW, ``2λ·(I − P)·ΔW``, lies entirely
  outside the alignment subspace;
* ``asft_scaled_delta``: the code penalises ``B·A`` without the LoRA scaling ``s``; True penalises ``s·B·A``.

**Where it enters.** The penalty's gradient is added to the LoRA factors' gradients in ``on_pre_optimizer_step``
(once per optimizer step: the step's objective is ``L_task + λ·R``), so ``SafeDistillTrainer``'s loss stays TRL's
and the per-segment formulas are untouched. This is transformers' hook after gradient clipping: the clip acts on the
task gradient only (with gradient accumulation 1 and no clipping, as in the authors' script, it equals adding
``λ·R`` to the loss). ``R`` is computed from r×r Gram matrices: with ``X = (I − Ĉ)·L`` (``L = B``, ``R = A``;
transposed for embeddings), ``||X·R||_F² = sum((XᵀX) ∘ (R·Rᵀ))``, ``O((out + in)·r² + out·k·r)`` a layer. Logged:
``asft/penalty`` (λ·R at the last step). fp16 with ``max_grad_norm = 0`` is refused (the gradients are still scaled
by the AMP loss scale at that hook).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from .alignment import LayerProjection, apply_c, layer_projections

PREFIX = "asft/"


def asft_penalty(left: torch.Tensor, right: torch.Tensor, basis: torch.Tensor, weights: torch.Tensor,
                 scale: float = 1.0) -> torch.Tensor:
    """``||(I − C)·(scale·L·R)||_F²`` with ``C = U·diag(g)·Uᵀ``, differentiable in ``left`` and ``right``."""
    x = left.float() - apply_c(left.float(), basis.float(), weights.float())
    r = right.float()
    return scale**2 * ((x.T @ x) * (r @ r.T)).sum()


def total_penalty(layers: list[LayerProjection], lam: float, scaled: bool) -> torch.Tensor:
    """``λ·Σ ||(I − C)·ΔW||_F²`` over ``layers`` (a layer with zero V contributes ``||ΔW||²``: C = 0 there)."""
    total = None
    for layer in layers:
        left, right = layer.factors()
        scale = layer.unit.scaling if scaled else 1.0
        if layer.basis is None:
            term = scale**2 * (((left.float().T @ left.float()) * (right.float() @ right.float().T)).sum())
        else:
            term = asft_penalty(left, right, layer.basis, layer.weights, scale)
        total = term if total is None else total + term.to(total.device)
    if total is None:
        return torch.zeros(())
    return lam * total


class AsftCallback(TrainerCallback):
    """AsFT's regulariser as a ``TrainerCallback`` (see the module docstring).

    Args:
        args: a ``SafeDistillConfig`` (or :class:`~.arguments.SLowEDArguments`) with ``asft_*`` fields.
    """

    def __init__(self, args: Any):
        self.args = args
        self.layers: list[LayerProjection] = []
        self.metrics: dict[str, float] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("AsftCallback needs the model in on_train_begin")
        if getattr(args, "fp16", False) and getattr(args, "max_grad_norm", 1.0) <= 0:
            raise ValueError("asft with fp16 needs max_grad_norm > 0 (its gradient is added after unscaling)")
        a = self.args
        self.layers = layer_projections(model, a.asft_reference, a.aligned_weights, a.asft_projection, "asft")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not self.layers or self.args.asft_lambda == 0:
            return
        params: list[torch.nn.Parameter] = []
        for layer in self.layers:
            params += [p for p in (layer.unit.A, layer.unit.B) if p.requires_grad]
        with torch.enable_grad():
            penalty = total_penalty(self.layers, self.args.asft_lambda, self.args.asft_scaled_delta)
            grads = torch.autograd.grad(penalty, params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g.to(p.dtype)
                else:
                    p.grad.add_(g.to(p.grad.dtype))
        self.metrics[f"{PREFIX}penalty"] = float(penalty.detach())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not self.metrics or "loss" not in logs:
            return
        logs.update(self.metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self.metrics)
