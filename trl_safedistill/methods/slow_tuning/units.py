r"""Slow tuning's units and their drift (SLowED, arXiv 2508.09666): what is measured, and how it is shrunk.

A *unit* is one layer's effective weight:

* LoRA (peft ``LoraLayer``, including bitsandbytes ``Linear4bit`` / ``Linear8bitLt`` base layers and LoRA
  embeddings): ``W = W_base + s·B·A`` with ``s = scaling[adapter]``; the anchor is ``W0 = W_base + s·B0·A0``
  (``B0 = 0`` for peft's default init), the delta ``Δ = s·(B·A − B0·A0)``. ``||W0||_F`` is computed once at
  the anchor (a 4-bit base is dequantized once for it). ``||Δ||_F`` is computed without forming ``B·A``::

      ||B·A||_F² = trace((BᵀB)(AAᵀ))                 (r×r matrices, O((in+out)·r²))
      ||B·A − B0·A0||_F² = tr(BᵀB·AAᵀ) − 2 tr(BᵀB0·A0Aᵀ) + tr(B0ᵀB0·A0A0ᵀ)   (float64 when B0 ≠ 0)

* every other trainable tensor with ``ndim >= 2`` (full fine-tuning, peft ``modules_to_save``), plus 1-D
  tensors with ``slow_tuning_include_1d``: ``Δ = W − W0``, ``W0`` a copy taken at the anchor.

Each unit can shrink its delta, ``Δ ← t·Δ``: full tensors ``W ← W0 + t·(W − W0)``; LoRA with ``B0 = 0``
``B ← t·B`` (``B·A`` is linear in ``B``; ``A`` and Adam's moments are untouched), exact; LoRA with ``B0 ≠ 0``
interpolates ``A, B`` toward ``A0, B0`` by the same ``t``: ``Δ(t) = s·(t·P + t²·Q)`` with
``P = (B−B0)·A0 + B0·(A−A0)``, ``Q = (B−B0)·(A−A0)``, so ``||Δ(t)||²`` is a quartic whose three coefficients
come from r×r Gram matrices; ``t`` is found by bisection on it (largest ``t`` with ``||Δ(t)|| <= target``, 40
halvings).

**Alignment subspace** (rule ``direction``, see :mod:`.rules`). A unit holds either a unit direction ``D̂`` (full
tensors, ``slow_tuning_direction_rank = 0``) or a *left basis*: ``U`` (out×k, orthonormal columns: the top-k left
singular vectors of the alignment delta ``D``, :func:`left_basis`) and ``D̂_k = Uᵀ D_k / ||D_k||`` (k×in), with
``D_k = U Uᵀ D``. ``undo`` is ``c = <Δ, D̂>`` (resp. ``<Δ, U·D̂_k>``) and ``limit_undo`` makes ``c = −bound``:

* full tensor, ``D̂``: ``W ← W + (−bound − c)·D̂`` (only the component along ``D̂`` moves; exact);
* full tensor or LoRA, basis ``U``: ``P = U Uᵀ`` and ``t = bound/(−c)``: ``Δ ← (I − P)Δ + t·PΔ``. For LoRA
  (``B0 = 0``) the effective weight is ``s·L·R`` with ``L = B, R = A`` (``L = Aᵀ, R = Bᵀ`` for transposed
  layers), so ``L ← L − (1 − t)·U(UᵀL)`` is exactly that correction: ``PΔ`` is scaled by ``t``, ``(I − P)Δ`` is
  unchanged to rounding. LoRA with ``B0 ≠ 0`` (non-default init) cannot be corrected in the column space alone
  (``Δ`` includes ``−s·B0·A0``); it falls back to interpolating ``A, B`` toward ``A0, B0`` (bisection on the
  quadratic ``c(t)``), which keeps the budget but also shrinks the orthogonal part.

Which rule calls which operation is :mod:`.rules`; this module is the linear algebra only.

Sharded parameters (FSDP DTensors; ZeRO-3 parameters outside ``GatheredParameters``) raise in
:func:`discover_units`; the callback gathers ZeRO-3 parameters around the anchor and each check (:mod:`.callback`).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)


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
    direction: torch.Tensor | None = None  # D̂ (basis None) or D̂_k = Uᵀ D_k / ||D_k|| (k×in), rule 'direction'
    basis: torch.Tensor | None = None  # U (out×k, orthonormal columns): the left alignment subspace, or None

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
    """A trainable tensor of full fine-tuning. The parameter is looked up in its module (``owner._parameters[attr]``)
    at every use, not held, so that inside :func:`~.callback.full_parameters` the unit sees the gathered full tensor
    that FSDP2 swaps in for its sharded DTensor (as :class:`_LoraUnit` reads its factors through the layer)."""

    owner: torch.nn.Module | None = None
    attr: str = ""
    w0: torch.Tensor | None = None

    @property
    def param(self) -> torch.nn.Parameter:
        return self.owner._parameters[self.attr]

    @torch.no_grad()
    def delta_norm(self) -> float:
        return float(torch.linalg.vector_norm(self.param - self.w0, dtype=torch.float32))

    @torch.no_grad()
    def undo(self) -> float:
        delta = self.param.float() - self.w0.float()
        if self.basis is None:
            return float((delta * self.direction.float()).sum())
        return float(((self.basis.float().T @ delta) * self.direction.float()).sum())

    @torch.no_grad()
    def shrink(self, t: float, target_norm: float | None = None) -> float:
        before = self.delta_norm() if target_norm is None else None
        self.param.lerp_(self.w0, 1.0 - t)  # W0 + t (W - W0)
        return target_norm if target_norm is not None else t * before

    @torch.no_grad()
    def limit_undo(self, c: float, bound: float) -> None:
        if self.basis is None:
            self.param.add_(self.direction.to(self.param.dtype), alpha=-bound - c)
            return
        u = self.basis.float()
        delta = self.param.float() - self.w0.float()
        self.param.sub_((u @ (u.T @ delta)).mul_(1.0 - bound / -c).to(self.param.dtype))  # W0 + (I-P)Δ + t·PΔ

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

    def _factors(self, b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, R) with ``L·R`` the product ``b·a`` oriented like W (``(b·a)ᵀ = aᵀ·bᵀ`` for transposed layers)."""
        return (a.T, b.T) if self.transpose else (b, a)

    def _inner_with_direction(self, b: torch.Tensor, a: torch.Tensor) -> float:
        """<s·b·a (oriented like W), D̂> without forming b·a: ``s·sum((LᵀD̂) ∘ R)``, or with a basis
        ``s·sum(((UᵀL)·R) ∘ D̂_k)``."""
        left, right = self._factors(b.float(), a.float())
        if self.basis is None:
            return self.scaling * float(((left.T @ self.direction.float()) * right).sum())
        return self.scaling * float((((self.basis.float().T @ left) @ right) * self.direction.float()).sum())

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
        t = bound / -c
        if not self.has_delta0:
            if self.basis is None:
                self._set(t)  # the subspace is the whole column space: c is linear in B
                return
            u = self.basis.float()
            if self.transpose:  # L = Aᵀ: A ← A − (1−t)·(A·U)·Uᵀ
                a = self.A
                a.sub_(((a.float() @ u) @ u.T).mul_(1.0 - t).to(a.dtype))
            else:  # L = B: B ← B − (1−t)·U·(UᵀB)
                b = self.B
                b.sub_((u @ (u.T @ b.float())).mul_(1.0 - t).to(b.dtype))
            return
        e, f, up, vp = self._path()
        lin = self._inner_with_direction(up, vp)  # <s·P, D̂>
        quad = self._inner_with_direction(e, f)  # <s·Q, D̂>
        self._set(_bisect(lambda x: -(lin * x + quad * x**2), bound))

    @property
    def quantized(self) -> bool:
        """Whether the frozen base weight is a bitsandbytes 4-bit or 8-bit tensor (its values are not the saved ones)."""
        weight = getattr(self.layer.get_base_layer(), "weight", None)
        return getattr(weight, "quant_state", None) is not None or type(weight).__name__ in ("Params4bit", "Int8Params")

    @torch.no_grad()
    def start_delta(self) -> torch.Tensor | None:
        """``s·B0·A0`` oriented like W (float32), or None when ``B0 = 0``."""
        if not self.has_delta0:
            return None
        delta0 = self.scaling * (self.b0.float() @ self.a0.float())
        return delta0.T if self.transpose else delta0

    @torch.no_grad()
    def effective_w0(self) -> torch.Tensor:
        from peft.utils.integrations import dequantize_module_weight

        base = self.layer.get_base_layer()
        w = dequantize_module_weight(base).detach().float().clone()
        if self.has_delta0:
            w += self.start_delta().to(w.device)
        return w


#: Singular values below ``RANK_RTOL · σ_max`` count as zero in :func:`left_basis` with ``rank = 0``. A delta saved
#: in float32 (a merged LoRA alignment) has rounding singular values near 1e-6·σ_max; one saved in bfloat16 has them
#: near 1e-2·σ_max, so its numerical rank is (nearly) full and ``rank = 0`` then spans the whole column space.
RANK_RTOL = 1e-4


@torch.no_grad()
def left_basis(d: torch.Tensor, rank: int = 0, rtol: float = RANK_RTOL) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, σ)``: the top-``rank`` left singular vectors (out×k, orthonormal) and singular values of ``d`` (out×in).

    ``rank = 0`` keeps every singular value above ``rtol·σ_max`` (the numerical rank: for a delta from a merged rank-r
    LoRA, r). Computed in float64 from the eigen-decomposition of the smaller Gram matrix (``d·dᵀ`` or ``dᵀ·d``), so an
    out×in delta costs one min(out, in)² eigen-problem; deterministic for a given input.
    """
    x = d.double()
    out, inner = x.shape
    if out <= inner:
        evals, evecs = torch.linalg.eigh(x @ x.T)
        evals, u = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    else:
        evals, v = torch.linalg.eigh(x.T @ x)
        evals, v = evals.flip(0).clamp_min(0.0), v.flip(1)
        u = x @ v
    sigma = evals.sqrt()
    if sigma.numel() == 0 or float(sigma[0]) == 0.0:
        return u[:, :0].float(), sigma[:0].float()
    k = int((sigma > rtol * sigma[0]).sum()) if rank <= 0 else min(rank, int((sigma > 0).sum()))
    u, sigma = u[:, :k], sigma[:k]
    if out > inner:
        u = u / sigma  # u_i = d·v_i / σ_i
    return u.float(), sigma.float()


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
        if p.numel() == 0 or type(p).__name__ == "DTensor":  # ZeRO-3 outside GatheredParameters: numel() == 0
            raise NotImplementedError(f"slow tuning does not support sharded parameters ({pname})")
        if p.ndim >= 2 or include_1d:
            full.append((pname, p))
    return lora_units, full

