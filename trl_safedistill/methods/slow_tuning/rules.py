r"""Slow tuning's rules (SLowED, arXiv 2508.09666): the budget, and how each rule corrects a unit's drift.

SLowED "scales down the magnitude of model weight changes to optimize the model weights in the neighboring
space near the initial weight distribution"; the exact rule is not published (OPEN). These are this project's
choices. **Drift** of a unit: ``d = ||Δ||_F / U`` with ``U = ||W0||_F`` (``slow_tuning_unit="weight"``) or
``U = ||W0 − W_ref||_F`` (``"reference"``, see :mod:`.reference`). **Budget** of epoch e:
``β_e = slow_tuning_budget · growth**e`` (``growth = slow_tuning_budget_growth``; e = the epoch the step belongs
to).

**Rules** (applied every ``slow_tuning_check_every = k`` optimizer steps and at each epoch end):

* ``project``: if ``d > β_e`` the delta is rescaled onto the budget, ``Δ ← (β_e / d)·Δ`` (:meth:`shrink
  <.units._Unit.shrink>`: exact for full tensors and LoRA with ``B0 = 0``, bisection on the quartic otherwise).
* ``scale``: ``Δ ← min(1 − slow_tuning_pull, β_e/d)·Δ`` at every check: a decoupled pull toward the anchor
  (like weight decay toward W0; with drift per step u the drift settles near u/pull, unlike a constant step
  scaling which Adam turns into a mere lower learning rate), capped, like every rule, at the budget β_e.
* ``direction``: only the component of Δ that undoes the alignment delta ``D = W_aligned − W_ref`` is limited,
  and only inside the alignment subspace; the rest of Δ is left as the optimizer made it. With ``k =
  slow_tuning_direction_rank``, ``U`` the top-k left singular vectors of D (out×k; ``k = 0``: its numerical rank,
  see :func:`.units.left_basis`), ``P = U Uᵀ``, ``D_k = P D`` and ``c = <Δ, D_k>/||D_k||``, the budget is

      undo = max(0, −c) / ||D_k||  =  max(0, −<Δ, D_k>) / ||D_k||²  <=  β_e

  (the fraction of the alignment delta the update undoes). When it is exceeded, with ``t = β_e·||D_k|| / (−c)``:

  - full tensors, ``k = 0``: ``W ← W + (−β_e·||D|| − c)·D̂`` (``D̂ = D/||D||``): only the component along D̂ moves;
  - full tensors with ``k > 0``, and LoRA (``W = W_base + s·B·A``, peft's ``B0 = 0``): ``Δ ← (I − P)Δ + t·PΔ``,
    for LoRA as the left projection ``B ← B − (1 − t)·U·(UᵀB)`` (``A`` for transposed layers): the component of
    the update in the alignment subspace is scaled down until it undoes exactly ``β_e`` of ``D_k``; the
    orthogonal part ``(I − P)Δ`` is unchanged. ``t`` scales all of ``PΔ``, not only its ``D_k`` component: a
    rank-r update plus a multiple of ``D_k`` is not a rank-r update, so no LoRA correction can move that one
    component alone. When D has full numerical rank (an alignment by full fine-tuning, or saved in bfloat16),
    ``P = I`` and the LoRA correction is ``B ← t·B``.
  - LoRA with ``B0 ≠ 0``: interpolation toward ``(A0, B0)`` (:mod:`.units`), budget kept, orthogonal part not.

  D is taken in full precision (:mod:`.reference`). ``slow_tuning_direction_dtype`` float32 (default) stores
  ``D̂`` (one copy of each full tensor) or ``U`` and ``Uᵀ D`` (k·(out + in) numbers a layer); bfloat16 halves it
  but holds the limit only to ~2^-8·||Δ||/||D||.
* a unit with status ``frozen`` (reference delta missing, policy ``freeze``) is pinned to W0; ``skip`` is
  measured but never corrected nor counted in the drift summary.

**Every-k bound.** With ``k > 1`` the drift at check steps is ≤ β_e; between checks it can exceed it by at
most ``sum_i ||u_i||_F / U`` over the ≤ k−1 unchecked updates ``u_i`` of the delta (for Adam, per element
``|u| ≲ lr``, so roughly ``(k−1)·lr·sqrt(numel)/U`` for a full tensor).
"""

from __future__ import annotations

from typing import Any

import torch

from .units import _Unit, delta_norms


def epoch_budget(budget: float, growth: float, epoch: int) -> float:
    """β_e = budget · growth**epoch."""
    return budget * growth**epoch


@torch.no_grad()
def apply_rule(units: list[_Unit], rule: str, beta: float, pull: float, step: int, epoch: int,
               correct: bool = True) -> dict[str, Any]:
    """Measure every unit's drift, apply ``rule`` with budget ``beta`` when ``correct``; returns the check's record.

    The record holds ``step``, ``epoch``, ``budget``, the drift summary after correction (``drift_mean``,
    ``drift_max``; ``drift_max_before`` before it), the drift relative to ``||W0||`` (``rel_drift_*``), the number
    of corrected units (``projections``), ``layers`` (name -> [drift before, after]) and ``projected`` (names).
    """
    layers: dict[str, list[float]] = {}
    projected: list[str] = []
    post_vals: list[float] = []
    pre_vals: list[float] = []
    rel_vals: list[float] = []
    for u, norm in zip(units, delta_norms(units)):
        pre = post = norm / u.unit_norm
        if u.status == "frozen":  # reference delta missing and policy 'freeze': pinned to W0
            if correct and norm > 0.0:
                norm = u.shrink(0.0, target_norm=0.0)
                post = 0.0
                projected.append(u.name)
        elif u.status == "skip":
            pass
        elif rule == "direction":
            if u.direction is None:
                pre = post = 0.0
            else:
                c = u.undo()
                pre = post = max(0.0, -c) / u.unit_norm
                if correct and pre > beta:
                    u.limit_undo(c, beta * u.unit_norm)
                    norm, post = u.delta_norm(), beta
                    projected.append(u.name)
        elif correct and rule == "project" and pre > beta:
            norm = u.shrink(beta / pre, target_norm=beta * u.unit_norm)
            post = norm / u.unit_norm
            projected.append(u.name)
        elif correct and rule == "scale" and norm > 0.0:
            target = min((1.0 - pull) * norm, beta * u.unit_norm)  # the pull, and never above the budget
            norm = u.shrink(target / norm, target_norm=target)
            post = norm / u.unit_norm
            projected.append(u.name)
        layers[u.name] = [pre, post]
        if u.status != "skip":
            pre_vals.append(pre)
            post_vals.append(post)
        rel_vals.append(norm / u.w0_norm if u.w0_norm else 0.0)
    record = {
        "step": step,
        "epoch": epoch,
        "budget": beta,
        "drift_mean": sum(post_vals) / len(post_vals) if post_vals else 0.0,
        "drift_max": max(post_vals, default=0.0),
        "drift_max_before": max(pre_vals, default=0.0),
        "rel_drift_mean": sum(rel_vals) / len(rel_vals) if rel_vals else 0.0,
        "rel_drift_max": max(rel_vals, default=0.0),
        "projections": len(projected),
        "layers": layers,
        "projected": projected,
    }
    return record
