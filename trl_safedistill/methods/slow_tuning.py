r"""Slow tuning (SLowED, arXiv 2508.09666): keep the trainable weights near their values at the start of training.

SLowED "scales down the magnitude of model weight changes to optimize the model weights in the neighboring
space near the initial weight distribution"; the exact rule is not published (OPEN). This module implements
this project's choice, :class:`SlowTuningCallback`, a ``TrainerCallback`` that acts in ``on_step_end``, i.e.
after ``optimizer.step()`` / ``lr_scheduler.step()`` / ``zero_grad()`` and before the next forward pass
(transformers 5.24 ``_run_epoch``; ``on_step_end`` is also the first hook that sees the incremented
``global_step`` and ``epoch``, and it runs before ``_maybe_log_save_evaluate``, so logs and checkpoints of
step t see the corrected weights).

**Units.** A *unit* is one layer's effective weight:

* LoRA (peft ``LoraLayer``, including bitsandbytes ``Linear4bit`` / ``Linear8bitLt`` base layers and LoRA
  embeddings): ``W = W_base + s·B·A`` with ``s = scaling[adapter]``; the anchor is ``W0 = W_base + s·B0·A0``
  (``B0 = 0`` for peft's default init), the delta ``Δ = s·(B·A − B0·A0)``. ``||W0||_F`` is computed once at
  the anchor (a 4-bit base is dequantized once for it). ``||Δ||_F`` is computed without forming ``B·A``::

      ||B·A||_F² = trace((BᵀB)(AAᵀ))                 (r×r matrices, O((in+out)·r²))
      ||B·A − B0·A0||_F² = tr(BᵀB·AAᵀ) − 2 tr(BᵀB0·A0Aᵀ) + tr(B0ᵀB0·A0A0ᵀ)   (float64 when B0 ≠ 0)

* every other trainable tensor with ``ndim >= 2`` (full fine-tuning, peft ``modules_to_save``), plus 1-D
  tensors with ``slow_tuning_include_1d``: ``Δ = W − W0``, ``W0`` a copy taken at the anchor.

**Drift** of a unit: ``d = ||Δ||_F / U`` with ``U = ||W0||_F`` (``slow_tuning_unit="weight"``) or
``U = ||W0 − W_ref||_F`` (``"reference"``: ``W_ref`` read by tensor name from ``slow_tuning_reference``, e.g.
the pre-alignment model; units missing from it or with a zero reference delta are skipped or frozen,
``slow_tuning_reference_missing``). **Budget** of epoch e: ``β_e = slow_tuning_budget · growth**e``
(``growth = slow_tuning_budget_growth``; e = the epoch the step belongs to).

**Rules** (applied every ``slow_tuning_check_every = k`` optimizer steps and at each epoch end):

* ``project``: if ``d > β_e`` the delta is rescaled onto the budget, ``Δ ← (β_e / d)·Δ``. Full tensors:
  ``W ← W0 + t·(W − W0)``. LoRA with ``B0 = 0``: ``B ← t·B`` (``B·A`` is linear in ``B``; ``A`` and Adam's
  moments are untouched), which lands exactly on the budget. LoRA with ``B0 ≠ 0``: ``A, B`` are interpolated
  toward ``A0, B0`` by the same ``t``: ``Δ(t) = s·(t·P + t²·Q)`` with ``P = (B−B0)·A0 + B0·(A−A0)``,
  ``Q = (B−B0)·(A−A0)``, so ``||Δ(t)||²`` is a quartic whose three coefficients come from r×r Gram
  matrices; ``t`` is found by bisection on it (largest ``t`` with ``d(t) <= β_e``, 40 halvings).
* ``scale``: ``Δ ← (1 − slow_tuning_pull)·Δ`` at every check (a decoupled pull toward the anchor, like weight
  decay toward W0; with drift per step u the drift settles near u/pull, unlike a constant step scaling which
  Adam turns into a mere lower learning rate).
* ``direction``: only the component of Δ that undoes the alignment delta ``D = W0 − W_ref`` is limited:
  with ``D̂ = D/||D||`` and ``c = <Δ, D̂>``, the quantity ``undo = max(0, −c) / ||D||`` (fraction of the
  alignment delta undone) is kept ``<= β_e``. Full tensors: ``W ← W + (−β_e·||D|| − c)·D̂`` (the orthogonal
  part is untouched). LoRA: ``c`` is linear in ``B`` (``<B·A, D̂> = sum((BᵀD̂) ∘ A)``), so ``B ← t·B`` with
  ``t = β_e·||D|| / (−c)`` (a low-rank delta cannot drop one direction exactly; the whole adapter delta is
  shrunk). ``D̂`` is kept on the layer's device in ``slow_tuning_direction_dtype`` (float32 by default: one
  extra copy of the constrained weights; bfloat16 halves it but is exact only to ~2^-8·||Δ||/||D||). Under
  4-bit quantisation ``D`` is measured against the dequantized base and contains its quantisation error.

**Every-k bound.** With ``k > 1`` the drift at check steps is ≤ β_e; between checks it can exceed it by at
most ``sum_i ||u_i||_F / U`` over the ≤ k−1 unchecked updates ``u_i`` of the delta (for Adam, per element
``|u| ≲ lr``, so roughly ``(k−1)·lr·sqrt(numel)/U`` for a full tensor).

**Anchor and resume.** ``on_save`` writes ``slow_tuning_anchor.safetensors`` (W0 of full tensors, A0/B0 of
LoRA units with ``B0 ≠ 0``) and ``slow_tuning_state.json`` (norms, counters, epoch records) into
``{output_dir}/checkpoint-{global_step}``. On resume the trainer calls :meth:`SlowTuningCallback.load_anchor`
with the checkpoint folder (from its ``_load_from_checkpoint`` override); if it does not, ``on_train_begin``
finds ``{output_dir}/checkpoint-{global_step}`` itself, and raises if there is no anchor there (re-anchoring at
the resumed weights would silently move the budget). A resumed run reports the same drift step for step.

**Metrics.** Every check stores ``slow_tuning/*`` values in :attr:`SlowTuningCallback.metrics`; the trainer
merges :meth:`SlowTuningCallback.pop_metrics` into ``logs`` in its ``log`` override (then every reporter sees
them). Without that, ``on_log`` adds them to ``logs`` and to ``state.log_history[-1]``. Per-layer drift of each
check goes to ``{output_dir}/slow_tuning_drift.jsonl`` (main process).

Multi-process: parameters are replicated (DDP), every rank applies the same deterministic correction; sharded
parameters (FSDP, ZeRO-3) are not supported and raise.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

from .arguments import SLowEDArguments

logger = logging.getLogger(__name__)

ANCHOR_FILE = "slow_tuning_anchor.safetensors"
STATE_FILE = "slow_tuning_state.json"
DRIFT_LOG_FILE = "slow_tuning_drift.jsonl"
PREFIX = "slow_tuning/"


# ---------------------------------------------------------------------------------------------------------------
# units
# ---------------------------------------------------------------------------------------------------------------
def _tr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """trace(x @ y) for square matrices, without the product."""
    return (x * y.T).sum()


def _bisect(f, target: float, iters: int = 40) -> float:
    """Largest t in [0, 1] found by bisection with f(t) <= target, given f(0) <= target < f(1)."""
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) <= target:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class _Unit:
    """One constrained tensor group. ``unit_norm`` is U; ``status`` 'constrained', 'frozen' or 'skip'."""

    name: str
    w0_norm: float
    unit_norm: float = 0.0
    status: str = "constrained"
    direction: torch.Tensor | None = None  # D̂, rule 'direction'

    def delta_norm(self) -> float:
        raise NotImplementedError

    def undo(self) -> float:
        """c = <Δ, D̂> (negative when Δ moves back toward the reference)."""
        raise NotImplementedError

    def shrink(self, t: float, target_norm: float | None = None) -> float:
        """Scale the delta by t (exactly, or by interpolation to ``target_norm``); returns the new ||Δ||."""
        raise NotImplementedError

    def limit_undo(self, c: float, bound: float) -> None:
        """Make <Δ, D̂> = -bound given current c < -bound."""
        raise NotImplementedError

    def effective_w0(self) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class _FullUnit(_Unit):
    param: torch.nn.Parameter | None = None
    w0: torch.Tensor | None = None

    @torch.no_grad()
    def delta_norm(self) -> float:
        return float(torch.linalg.vector_norm(self.param - self.w0, dtype=torch.float32))

    @torch.no_grad()
    def undo(self) -> float:
        return float(((self.param.float() - self.w0.float()) * self.direction.float()).sum())

    @torch.no_grad()
    def shrink(self, t: float, target_norm: float | None = None) -> float:
        before = self.delta_norm() if target_norm is None else None
        self.param.lerp_(self.w0, 1.0 - t)  # W0 + t (W - W0)
        return target_norm if target_norm is not None else t * before

    @torch.no_grad()
    def limit_undo(self, c: float, bound: float) -> None:
        self.param.add_(self.direction.to(self.param.dtype), alpha=-bound - c)

    def effective_w0(self) -> torch.Tensor:
        return self.w0.float()


@dataclass
class _LoraUnit(_Unit):
    layer: Any = None
    adapter: str = "default"
    embedding: bool = False
    transpose: bool = False
    scaling: float = 1.0
    a0: torch.Tensor | None = None  # stored only when B0 != 0 (delta0 != 0)
    b0: torch.Tensor | None = None
    _const: float = field(default=0.0, repr=False)  # ||B0 A0||² (float64)
    _c0: float = field(default=0.0, repr=False)  # <s B0 A0, D̂>

    @property
    def A(self) -> torch.Tensor:  # (r, in)
        if self.embedding:
            return self.layer.lora_embedding_A[self.adapter]
        return self.layer.lora_A[self.adapter].weight

    @property
    def B(self) -> torch.Tensor:  # (out, r)
        if self.embedding:
            return self.layer.lora_embedding_B[self.adapter]
        return self.layer.lora_B[self.adapter].weight

    @property
    def has_delta0(self) -> bool:
        return self.b0 is not None

    def prepare(self) -> None:
        if self.has_delta0:
            b0, a0 = self.b0.double(), self.a0.double()
            self._const = float(_tr(b0.T @ b0, a0 @ a0.T))

    def _inner_with_direction(self, b: torch.Tensor, a: torch.Tensor) -> float:
        """<s·B·A (oriented like W), D̂> = s·sum((Bᵀ D̂) ∘ A) without forming B·A."""
        d = self.direction.float()
        if self.transpose:
            d = d.T
        return self.scaling * float(((b.float().T @ d) * a.float()).sum())

    def _delta_sq(self, a: torch.Tensor, b: torch.Tensor) -> float:
        if not self.has_delta0:
            a, b = a.float(), b.float()
            return self.scaling**2 * max(float(_tr(b.T @ b, a @ a.T)), 0.0)
        a, b, a0, b0 = a.double(), b.double(), self.a0.double(), self.b0.double()
        val = float(_tr(b.T @ b, a @ a.T) - 2.0 * _tr(b.T @ b0, a0 @ a.T)) + self._const
        return self.scaling**2 * max(val, 0.0)

    @torch.no_grad()
    def delta_norm(self) -> float:
        return math.sqrt(self._delta_sq(self.A, self.B))

    @torch.no_grad()
    def undo(self) -> float:
        return self._inner_with_direction(self.B, self.A) - self._c0

    def _interp(self, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        a0, b0 = self.a0.to(self.A.device), self.b0.to(self.B.device)
        return torch.lerp(a0.double(), self.A.double(), t), torch.lerp(b0.double(), self.B.double(), t)

    @torch.no_grad()
    def _set(self, t: float) -> None:
        if not self.has_delta0:
            self.B.mul_(t)
            return
        a_t, b_t = self._interp(t)
        self.A.copy_(a_t.to(self.A.dtype))
        self.B.copy_(b_t.to(self.B.dtype))

    def _path(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """E = B - B0, F = A - A0 and the stacked factors of P = E·A0 + B0·F (float64).

        Along the path A_t = A0 + tF, B_t = B0 + tE the delta is s·(t·P + t²·Q) with Q = E·F.
        """
        b0, a0 = self.b0.double().to(self.B.device), self.a0.double().to(self.A.device)
        e, f = self.B.double() - b0, self.A.double() - a0
        return e, f, torch.cat([e, b0], dim=1), torch.cat([a0, f], dim=0)

    @torch.no_grad()
    def _norm_poly(self) -> tuple[float, float, float]:
        """(c2, c3, c4) with ||Δ(t)||² = c2·t² + c3·t³ + c4·t⁴, from r×r Gram matrices only."""
        e, f, up, vp = self._path()
        s2 = self.scaling**2
        pp = float(_tr(up.T @ up, vp @ vp.T))
        pq = float(_tr(up.T @ e, f @ vp.T))  # <P, Q> = tr(Vpᵀ Upᵀ E F)
        qq = float(_tr(e.T @ e, f @ f.T))
        return s2 * pp, 2.0 * s2 * pq, s2 * qq

    @torch.no_grad()
    def shrink(self, t: float, target_norm: float | None = None) -> float:
        if not self.has_delta0:
            before = self.delta_norm()
            self._set(t)
            return t * before
        c2, c3, c4 = self._norm_poly()
        current = math.sqrt(max(c2 + c3 + c4, 0.0))
        if target_norm is None:
            target_norm = t * current
        t_star = _bisect(lambda x: math.sqrt(max(c2 * x**2 + c3 * x**3 + c4 * x**4, 0.0)), target_norm)
        self._set(t_star)
        return math.sqrt(max(c2 * t_star**2 + c3 * t_star**3 + c4 * t_star**4, 0.0))

    @torch.no_grad()
    def limit_undo(self, c: float, bound: float) -> None:
        if not self.has_delta0:
            self._set(bound / -c)  # c is linear in B
            return
        e, f, up, vp = self._path()
        d = self.direction.double()
        d = d.T if self.transpose else d
        lin = self.scaling * float(((up.T @ d) * vp).sum())  # <s·P, D̂>
        quad = self.scaling * float(((e.T @ d) * f).sum())  # <s·Q, D̂>
        self._set(_bisect(lambda x: -(lin * x + quad * x**2), bound))

    @torch.no_grad()
    def effective_w0(self) -> torch.Tensor:
        from peft.utils.integrations import dequantize_module_weight

        base = self.layer.get_base_layer()
        w = dequantize_module_weight(base).detach().float().clone()
        if self.has_delta0:
            delta0 = self.scaling * (self.b0.float().to(w.device) @ self.a0.float().to(w.device))
            w += delta0.T if self.transpose else delta0
        return w


@torch.no_grad()
def delta_norms(units: list[_Unit]) -> list[float]:
    """``||Δ||_F`` of every unit, the LoRA units with ``B0 = 0`` computed together (the per-step cost of checking).

    LoRA units without an initial delta are grouped by (A shape, B shape, device) and each group takes one batched
    product: ``G = BᵀB`` and ``H = AAᵀ`` as ``(n, r, r)`` stacks, ``||s·B·A||_F = |s|·sqrt(sum(G ∘ Hᵀ))`` (the trace
    identity above), read back with a single ``tolist()``. With 7 linear kinds per decoder layer this is 7 small
    batched products instead of one Python round trip per layer; the result equals :meth:`_Unit.delta_norm`.
    Every other unit (full tensors, LoRA with ``B0 ≠ 0``) is measured on its own.
    """
    norms: list[float] = [0.0] * len(units)
    groups: dict[tuple, list[int]] = {}
    for i, u in enumerate(units):
        if isinstance(u, _LoraUnit) and not u.has_delta0:
            groups.setdefault((tuple(u.A.shape), tuple(u.B.shape), u.A.device, u.B.device), []).append(i)
        else:
            norms[i] = u.delta_norm()
    for index in groups.values():
        a = torch.stack([units[i].A.detach() for i in index]).float()  # (n, r, in)
        b = torch.stack([units[i].B.detach() for i in index]).float().to(a.device)  # (n, out, r)
        gram_b = b.transpose(1, 2) @ b  # (n, r, r)
        gram_a = a @ a.transpose(1, 2)  # (n, r, r)
        squares = (gram_b * gram_a.transpose(1, 2)).sum(dim=(1, 2)).clamp_min(0.0).sqrt().tolist()
        for i, value in zip(index, squares):
            norms[i] = abs(units[i].scaling) * value
    return norms


def canonical_name(name: str) -> str:
    """Parameter name as in a plain checkpoint: peft wrappers removed (``base_model.model.``, ``.base_layer``,
    ``.modules_to_save.<adapter>``, ``.original_module``)."""
    name = re.sub(r"^base_model\.model\.", "", name)
    name = name.replace(".base_layer", "")
    name = re.sub(r"\.modules_to_save\.[^.]+", "", name)
    return name.replace(".original_module", "")


def _lora_layers(model: torch.nn.Module) -> list[tuple[str, Any]]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def discover_units(model: torch.nn.Module, include_1d: bool = False) -> tuple[list[_LoraUnit], list[tuple[str, Any]]]:
    """LoRA units (one per layer and trainable adapter) and the other trainable tensors (name, parameter)."""
    lora_units: list[_LoraUnit] = []
    lora_param_ids: set[int] = set()
    for name, layer in _lora_layers(model):
        for adapter in getattr(layer, "active_adapters", []):
            embedding = adapter in getattr(layer, "lora_embedding_A", {})
            if not embedding and adapter not in getattr(layer, "lora_A", {}):
                continue
            if getattr(layer, "use_dora", {}).get(adapter, False):
                raise NotImplementedError(f"slow tuning does not support DoRA ({name})")
            unit = _LoraUnit(name=f"{canonical_name(name)}[{adapter}]", w0_norm=0.0, layer=layer, adapter=adapter)
            unit.embedding = embedding
            unit.transpose = True if embedding else bool(getattr(layer, "fan_in_fan_out", False))
            unit.scaling = float(layer.scaling[adapter])
            if unit.A.ndim != 2:
                logger.warning("slow tuning: skipping non-2D LoRA layer %s", name)
                continue
            if not (unit.A.requires_grad or unit.B.requires_grad):
                continue
            lora_param_ids.update((id(unit.A), id(unit.B)))
            lora_units.append(unit)
    full: list[tuple[str, Any]] = []
    for pname, p in model.named_parameters():
        if not p.requires_grad or id(p) in lora_param_ids or ".lora_" in pname:
            continue
        if p.numel() == 0 or type(p).__name__ == "DTensor" or hasattr(p, "ds_id"):
            raise NotImplementedError(f"slow tuning does not support sharded parameters ({pname})")
        if p.ndim >= 2 or include_1d:
            full.append((pname, p))
    return lora_units, full


def reference_location(name_or_path: str) -> str:
    """A local file or folder for ``slow_tuning_reference``: a path as is, ``embedded-default`` converted, else a hub
    model id, whose ``*.safetensors`` files are fetched with ``huggingface_hub.snapshot_download`` (cached)."""
    from ..models import resolve_model_path

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


# ---------------------------------------------------------------------------------------------------------------
# callback
# ---------------------------------------------------------------------------------------------------------------
class SlowTuningCallback(TrainerCallback):
    """Slow tuning as a ``TrainerCallback`` (rules, formulas, resume and metrics: see the module docstring).

    Args:
        args: :class:`SLowEDArguments` (or ``SafeDistillConfig``); ``slow_tuning_*`` fields are read.

    Use: ``trainer.add_callback(SlowTuningCallback(config))``; the anchor is taken in ``on_train_begin``.
    """

    def __init__(self, args: SLowEDArguments):
        self.args = args
        self.rule = args.slow_tuning_rule
        self.units: list[_Unit] = []
        self.metrics: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []  # per check: step, epoch, budget, drift_mean, drift_max, ...
        self.projections_total = 0
        self.epoch_records: list[dict[str, float]] = []
        self._epoch_running = {"epoch": 0, "drift_max_steps": 0.0, "projections": 0}
        self._projections_since_log = 0
        self._pending_dir: str | None = None
        self._last_check_step = -1

    # ---- set-up -------------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.rule != "off"

    def budget(self, epoch: int) -> float:
        """β_e = slow_tuning_budget · slow_tuning_budget_growth**e."""
        return self.args.slow_tuning_budget * self.args.slow_tuning_budget_growth**epoch

    @torch.no_grad()
    def anchor(self, model: torch.nn.Module, saved: dict[str, Any] | None = None) -> None:
        """Take the anchor from ``model`` now (``saved`` is None), or rebuild it from a checkpoint's files."""
        lora_units, full = discover_units(model, self.args.slow_tuning_include_1d)
        tensors = saved["tensors"] if saved else {}
        records = {u["name"]: u for u in saved["state"]["units"]} if saved else {}
        if saved:
            names = {u.name for u in lora_units} | {canonical_name(n) for n, _ in full}
            if names != set(records):
                diff = sorted(names ^ set(records))[:5]
                raise ValueError(f"slow tuning anchor does not match the model's trainable layers, e.g. {diff}")
        units: list[_Unit] = []
        for u in lora_units:
            if saved:
                if f"b0::{u.name}" in tensors:
                    u.a0, u.b0 = tensors[f"a0::{u.name}"].to(u.A.device), tensors[f"b0::{u.name}"].to(u.B.device)
            elif bool(u.B.detach().any()) and bool(u.A.detach().any()):
                u.a0, u.b0 = u.A.detach().clone(), u.B.detach().clone()
            u.prepare()
            units.append(u)
        for pname, p in full:
            name = canonical_name(pname)
            w0 = tensors[f"w0::{name}"].to(device=p.device, dtype=p.dtype) if saved else p.detach().clone()
            units.append(_FullUnit(name=name, w0_norm=0.0, param=p, w0=w0))
        needs_w0 = not saved or self.rule == "direction"
        reference = _Reference(self.args.slow_tuning_reference) if self._uses_reference() and needs_w0 else None
        n_matched = 0
        for u in units:
            if saved:
                rec = records[u.name]
                u.w0_norm, u.unit_norm, u.status = rec["w0_norm"], rec["unit_norm"], rec["status"]
            if needs_w0:
                w0 = u.effective_w0()
                if not saved:
                    u.w0_norm = float(torch.linalg.vector_norm(w0))
                    u.unit_norm, u.status = u.w0_norm, "constrained"
                if reference is not None:
                    n_matched += self._attach_reference(u, w0, reference, set_norm=not saved)
                del w0
            if isinstance(u, _LoraUnit) and u.direction is not None and u.has_delta0:
                u._c0 = u._inner_with_direction(u.b0, u.a0)
        if reference is not None and n_matched == 0:
            raise ValueError(f"no tensor of the model matched slow_tuning_reference={self.args.slow_tuning_reference}")
        if any(u.w0_norm == 0.0 and u.status == "constrained" for u in units):
            for u in units:
                if u.w0_norm == 0.0 and u.status == "constrained":
                    u.unit_norm, u.status = 1.0, "skip"  # zero-initialised tensors: no relative unit
        self.units = units
        logger.info("slow tuning (%s): %d units, anchor %s", self.rule, len(units), "restored" if saved else "taken")

    def _uses_reference(self) -> bool:
        return self.rule == "direction" or (self.rule != "off" and self.args.slow_tuning_unit == "reference")

    def _attach_reference(self, u: _Unit, w0: torch.Tensor, reference: _Reference, set_norm: bool) -> int:
        ref_name = re.sub(r"\[[^\]]+\]$", "", u.name) + ".weight" if isinstance(u, _LoraUnit) else u.name
        ref = reference.get(ref_name)
        ok = ref is not None and tuple(ref.shape) == tuple(w0.shape)
        d = (w0 - ref.to(w0.device).float()) if ok else None
        d_norm = float(torch.linalg.vector_norm(d)) if ok else 0.0
        if set_norm:
            if d_norm > 0.0:
                u.unit_norm, u.status = d_norm, "constrained"
            else:
                policy = self.args.slow_tuning_reference_missing
                u.unit_norm, u.status = u.w0_norm or 1.0, ("frozen" if policy == "freeze" else "skip")
        if self.rule == "direction" and d_norm > 0.0:
            dtype = getattr(torch, self.args.slow_tuning_direction_dtype)
            direction = d.to(dtype)
            u.direction = direction / torch.linalg.vector_norm(direction.float()).to(dtype)  # unit norm as stored
        return int(ok)

    # ---- checks -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def check(self, step: int, epoch: int, correct: bool = True) -> dict[str, Any]:
        """Measure every unit's drift, apply the rule when ``correct``; returns this check's record."""
        beta = self.budget(epoch)
        pull = self.args.slow_tuning_pull
        layers: dict[str, list[float]] = {}
        projected: list[str] = []
        post_vals: list[float] = []
        pre_vals: list[float] = []
        rel_vals: list[float] = []
        for u, norm in zip(self.units, delta_norms(self.units)):
            pre = post = norm / u.unit_norm
            if u.status == "frozen":  # reference delta missing and policy 'freeze': pinned to W0
                if correct and norm > 0.0:
                    norm = u.shrink(0.0, target_norm=0.0)
                    post = 0.0
                    projected.append(u.name)
            elif u.status == "skip":
                pass
            elif self.rule == "direction":
                if u.direction is None:
                    pre = post = 0.0
                else:
                    c = u.undo()
                    pre = post = max(0.0, -c) / u.unit_norm
                    if correct and pre > beta:
                        u.limit_undo(c, beta * u.unit_norm)
                        norm, post = u.delta_norm(), beta
                        projected.append(u.name)
            elif correct and self.rule == "project" and pre > beta:
                norm = u.shrink(beta / pre, target_norm=beta * u.unit_norm)
                post = norm / u.unit_norm
                projected.append(u.name)
            elif correct and self.rule == "scale" and norm > 0.0:
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

    def _record(self, record: dict[str, Any], args: Any, state: Any) -> None:
        n = record["projections"]
        self.projections_total += n
        self._projections_since_log += n
        run = self._epoch_running
        if run["epoch"] != record["epoch"]:
            run.update(epoch=record["epoch"], drift_max_steps=0.0, projections=0)
        run["drift_max_steps"] = max(run["drift_max_steps"], record["drift_max_before"])
        run["projections"] += n
        record["projections_total"] = self.projections_total
        summary = {k: v for k, v in record.items() if k not in ("layers", "projected")}
        self.history.append(summary)
        self.metrics.update(
            {
                f"{PREFIX}drift_mean": record["drift_mean"],
                f"{PREFIX}drift_max": record["drift_max"],
                f"{PREFIX}drift_max_before": record["drift_max_before"],
                f"{PREFIX}budget": record["budget"],
                f"{PREFIX}projections_step": float(n),
                f"{PREFIX}projections": float(self._projections_since_log),
                f"{PREFIX}projections_total": float(self.projections_total),
            }
        )
        if self.args.slow_tuning_unit == "reference" or self.rule == "direction":
            self.metrics[f"{PREFIX}rel_drift_mean"] = record["rel_drift_mean"]
            self.metrics[f"{PREFIX}rel_drift_max"] = record["rel_drift_max"]
        if self.args.slow_tuning_log_layers and getattr(state, "is_world_process_zero", True) and args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, DRIFT_LOG_FILE), "a") as fh:
                fh.write(json.dumps({**summary, "layers": record["layers"], "projected": record["projected"]}) + "\n")

    @staticmethod
    def step_epoch(state: Any) -> int:
        """Index of the epoch an optimizer step belongs to, from ``state.epoch`` after the step (e.g. 1.0 -> 0)."""
        return max(0, math.ceil((state.epoch or 0.0) - 1e-9) - 1)

    # ---- hooks --------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.enabled:
            return
        if model is None:
            raise ValueError("SlowTuningCallback needs the model in on_train_begin")
        directory = self._pending_dir
        if directory is None and state.global_step > 0:
            candidate = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isfile(os.path.join(candidate, STATE_FILE)):
                directory = candidate
            else:
                raise RuntimeError(
                    f"resuming at step {state.global_step} but no slow-tuning anchor was loaded: call "
                    "SlowTuningCallback.load_anchor(checkpoint_dir) from the trainer's _load_from_checkpoint"
                )
        self._pending_dir = None
        if directory is None:
            self._reset()
            self.anchor(model)
        else:
            self._restore(directory, model, state.global_step, args)

    def on_step_end(self, args, state, control, **kwargs):
        if not self.enabled or not self.units:
            return
        k = self.args.slow_tuning_check_every
        if state.global_step % k == 0:
            self._record(self.check(state.global_step, self.step_epoch(state)), args, state)
            self._last_check_step = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        if not self.enabled or not self.units:
            return
        epoch = self.step_epoch(state)
        if self._last_check_step != state.global_step:
            self._record(self.check(state.global_step, epoch), args, state)
            self._last_check_step = state.global_step
        last = self.history[-1] if self.history else {"drift_mean": 0.0, "drift_max": 0.0}
        run = self._epoch_running
        rec = {
            "epoch": float(epoch),
            "drift_mean": last["drift_mean"],
            "drift_max": last["drift_max"],
            "drift_max_steps": run["drift_max_steps"] if run["epoch"] == epoch else last["drift_max"],
            "projections": float(run["projections"] if run["epoch"] == epoch else 0),
        }
        self.epoch_records.append(rec)
        self.metrics.update({f"{PREFIX}epoch_{k}": v for k, v in rec.items() if k != "epoch"})
        self.metrics[f"{PREFIX}epoch_index"] = float(epoch)

    def on_save(self, args, state, control, **kwargs):
        if not self.enabled or not self.units or not getattr(args, "should_save", True):
            return
        directory = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(directory):
            self.save_anchor(directory)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Fallback when the trainer did not merge pop_metrics() into logs itself.
        if not self.metrics or logs is None:
            return
        metrics = self.pop_metrics()
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)

    def pop_metrics(self) -> dict[str, float]:
        """The ``slow_tuning/*`` metrics since the last call (for ``Trainer.log``); resets the per-log counters."""
        metrics, self.metrics = self.metrics, {}
        self._projections_since_log = 0
        return metrics

    # ---- persistence --------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.metrics, self.history, self.epoch_records = {}, [], []
        self.projections_total, self._projections_since_log, self._last_check_step = 0, 0, -1
        self._epoch_running = {"epoch": 0, "drift_max_steps": 0.0, "projections": 0}

    def save_anchor(self, directory: str) -> None:
        """Write the anchor tensors and the callback's state into ``directory`` (a checkpoint folder)."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        for u in self.units:
            if isinstance(u, _FullUnit):
                tensors[f"w0::{u.name}"] = u.w0.detach().cpu().contiguous()
            elif isinstance(u, _LoraUnit) and u.has_delta0:
                tensors[f"a0::{u.name}"] = u.a0.detach().cpu().contiguous()
                tensors[f"b0::{u.name}"] = u.b0.detach().cpu().contiguous()
        os.makedirs(directory, exist_ok=True)
        save_file(tensors, os.path.join(directory, ANCHOR_FILE))
        state = {
            "rule": self.rule,
            "units": [
                {"name": u.name, "w0_norm": u.w0_norm, "unit_norm": u.unit_norm, "status": u.status}
                for u in self.units
            ],
            "projections_total": self.projections_total,
            "projections_since_log": self._projections_since_log,
            "last_check_step": self._last_check_step,
            "epoch_running": self._epoch_running,
            "epoch_records": self.epoch_records,
            "history": self.history,
            "metrics": self.metrics,
        }
        with open(os.path.join(directory, STATE_FILE), "w") as fh:
            json.dump(state, fh)

    def load_anchor(self, checkpoint_dir: str) -> bool:
        """Register ``checkpoint_dir``'s anchor for the coming ``on_train_begin`` (call it on resume).

        Returns False when slow tuning is off; raises ``FileNotFoundError`` when the checkpoint has no anchor.
        """
        if not self.enabled:
            return False
        if not os.path.isfile(os.path.join(checkpoint_dir, STATE_FILE)):
            raise FileNotFoundError(
                f"{checkpoint_dir} has no {STATE_FILE}: it was not trained with slow tuning, so the anchor W0 "
                "(the weights at the start of training) is unknown"
            )
        self._pending_dir = str(checkpoint_dir)
        return True

    def _restore(self, directory: str, model: torch.nn.Module, step: int, args: Any) -> None:
        from safetensors.torch import load_file

        with open(os.path.join(directory, STATE_FILE)) as fh:
            state = json.load(fh)
        if state["rule"] != self.rule:
            logger.warning("slow tuning: checkpoint rule %s, now %s", state["rule"], self.rule)
        tensors = load_file(os.path.join(directory, ANCHOR_FILE))
        self.anchor(model, saved={"state": state, "tensors": tensors})
        self.projections_total = state["projections_total"]
        self._projections_since_log = state["projections_since_log"]
        self._last_check_step = state["last_check_step"]
        self._epoch_running = state["epoch_running"]
        self.epoch_records = state["epoch_records"]
        self.history = state["history"]
        self.metrics = state["metrics"]
        path = os.path.join(args.output_dir, DRIFT_LOG_FILE) if args.output_dir else None
        if path and os.path.isfile(path):  # drop lines of the interrupted run past the checkpoint
            with open(path) as fh:
                lines = [ln for ln in fh if ln.strip() and json.loads(ln)["step"] <= step]
            with open(path, "w") as fh:
                fh.writelines(lines)
