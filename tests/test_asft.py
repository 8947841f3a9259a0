"""AsFT (arXiv 2506.08473): the penalty's value, where its gradient goes, and that it holds the update in training."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file
from transformers import Trainer

from trl_safedistill.methods.alignment import apply_c, projection_from_delta
from trl_safedistill.methods.arguments import SLowEDArguments
from trl_safedistill.methods.asft import AsftCallback, asft_penalty

from .test_slow_tuning import IndependentDrift, dataset, lora_model, training_args


def test_penalty_equals_the_hand_computed_value():
    # V = [[1, 2], [0, 0], [0, 0]]: Ĉ = V·Vᵀ/||V||_F = diag(√5, 0, 0); ΔW = B·A = [[1, 0], [1, 0], [0, 0]]
    v = torch.tensor([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
    b, a = torch.tensor([[1.0], [1.0], [0.0]]), torch.tensor([[1.0, 0.0]])
    basis, weights = projection_from_delta(v, "approximate")
    # (I − Ĉ)·ΔW = [[1 − √5, 0], [1, 0], [0, 0]]
    expected = (1 - math.sqrt(5)) ** 2 + 1
    assert float(asft_penalty(b, a, basis, weights)) == pytest.approx(expected, rel=1e-6)
    assert float(asft_penalty(b, a, basis, weights, scale=3.0)) == pytest.approx(9 * expected, rel=1e-6)
    basis, weights = projection_from_delta(v, "exact")  # P = diag(1, 0, 0): (I − P)·ΔW = [[0, 0], [1, 0], [0, 0]]
    assert float(asft_penalty(b, a, basis, weights)) == pytest.approx(1.0, rel=1e-6)


def test_gradient_flows_only_into_the_orthogonal_component():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(6, 2, generator=g) @ torch.randn(2, 5, generator=g)  # a rank-2 alignment matrix
    basis, weights = projection_from_delta(v, "exact")
    assert basis.shape == (6, 2)
    b = torch.randn(6, 3, generator=g, requires_grad=True)
    a = torch.randn(3, 5, generator=g, requires_grad=True)
    penalty = asft_penalty(b, a, basis, weights)
    (grad_b,) = torch.autograd.grad(penalty, [b])
    # dR/dB = 2·(I − P)·ΔW·Aᵀ: nothing of it lies in the alignment subspace
    assert float((basis.T @ grad_b).norm()) <= 1e-5 * float(grad_b.norm())
    assert float(grad_b.norm()) > 0
    # equivalently, the penalty is blind to any update inside the subspace: R(B + U·X) = R(B)
    shifted = b.detach() + basis @ torch.randn(2, 3, generator=g)
    assert float(asft_penalty(shifted, a.detach(), basis, weights)) == pytest.approx(float(penalty.detach()), rel=1e-5)
    # and it is ||(I − P)·ΔW||² formed explicitly
    delta = b.detach() @ a.detach()
    assert float(penalty.detach()) == pytest.approx(float((delta - apply_c(delta, basis, weights)).norm() ** 2), rel=1e-5)


def _orthogonal_norm(model, w0, deltas) -> float:
    """Σ ||(I − P)·ΔW||_F over layers, P the projector onto each D's column space."""
    now = IndependentDrift.effective(model)
    total = 0.0
    for name, d in deltas.items():
        u, s, _ = torch.linalg.svd(d.double(), full_matrices=False)
        basis = u[:, : int((s > 1e-4 * s[0]).sum())].float()
        delta = now[name] - w0[name]
        total += float((delta - basis @ (basis.T @ delta)).norm())
    return total


def test_training_with_asft_keeps_the_update_nearer_the_alignment_subspace(tmp_path):
    from trl_safedistill.methods.slow_tuning import canonical_name

    runs = {}
    for lam in (0.0, 50.0):
        model = lora_model()
        w0 = IndependentDrift.effective(model)
        g = torch.Generator().manual_seed(2)
        deltas = {n: 0.01 * (torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1], generator=g))
                  for n, w in w0.items()}
        key = {n: canonical_name(n) + ".weight" for n in w0}
        save_file({key[n]: (w0[n] - deltas[n]).contiguous() for n in w0}, str(tmp_path / "unaligned.safetensors"))
        save_file({key[n]: w0[n].contiguous() for n in w0}, str(tmp_path / "aligned.safetensors"))
        args = SLowEDArguments(asft=True, asft_lambda=lam, asft_projection="exact",
                               asft_reference=str(tmp_path / "unaligned.safetensors"),
                               aligned_weights=str(tmp_path / "aligned.safetensors"))
        callback = AsftCallback(args)
        Trainer(model=model, args=training_args(tmp_path / f"out{lam}", 10, lr=1e-2), train_dataset=dataset(),
                callbacks=[callback]).train()
        assert len(callback.layers) == 14 and all(layer.basis.shape[1] == 2 for layer in callback.layers)
        runs[lam] = _orthogonal_norm(model, w0, deltas)
    assert runs[50.0] < 0.5 * runs[0.0]
