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
* ``scale``: ``Δ ← (1 − slow_tuning_pull)·Δ`` at every check (a decoupled pull toward the anchor, like weight
  decay toward W0; with drift per step u the drift settles near u/pull, unlike a constant step scaling which
  Adam turns into a mere lower learning rate).
* ``direction``: only the component of Δ that undoes the alignment delta ``D = W0 − W_ref`` is limited:
  with ``D̂ = D/||D||`` and ``c = <Δ, D̂>``, the quantity ``undo = max(0, −c) / ||D||`` (fraction of the
  alignment delta undone) is kept ``<= β_e``. Full tensors: ``W ← W + (−β_e·||D|| − c)·D̂`` (the orthogonal
  part is untouched). LoRA: ``c`` is linear in ``B`` (``<B·A, D̂> = sum((BᵀD̂) ∘ A)``), so ``B ← t·B`` with
  ``t = β_e·||D|| / (−c)`` (a low-rank delta cannot drop one direction exactly; the whole adapter delta is
  shrunk). ``slow_tuning_direction_dtype`` float32 (default) costs one extra copy of the constrained weights;
  bfloat16 halves it but is exact only to ~2^-8·||Δ||/||D||.
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
            norm = u.shrink(1.0 - pull)
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
