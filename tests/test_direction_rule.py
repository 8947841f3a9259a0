"""Rule ``direction``: only the update's component in the alignment subspace moves, and it meets the budget.

Every optimizer step is watched twice, just before and just after :class:`SlowTuningCallback` corrects it (two
monitor callbacks around it), with the effective weights formed by brute force (``W_base + s·B·A``, the 4-bit base
dequantized). Per layer and step, with the test's own alignment delta D and projector P (``D̂D̂ᵀ`` for full tensors
at rank 0, ``U·Uᵀ`` from ``torch.linalg.svd`` of D otherwise):

* after the correction, the undone fraction ``max(0, −<Δ, D_k>)/||D_k||²`` is at most the budget (relative 1e-3);
* the correction ``Δ_after − Δ_before`` has no component outside the subspace: ``||(I − P)(Δ_after − Δ_before)||``
  is at most ``1e-4·||Δ_before||`` (float32 rounding);
* the budget bound at some step (the check is not vacuous), and the orthogonal part was not held to the budget.

The 4-bit case also checks that D comes from the saved full-precision weights: D̂ from a NF4 model matches the true
D̂ (cosine > 0.99), while the delta against the dequantized NF4 copy would be mostly quantisation noise.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformers import Trainer, TrainerCallback

from trl_safedistill.methods.arguments import SLowEDArguments
from trl_safedistill.methods.slow_tuning import SlowTuningCallback, canonical_name

from .test_slow_tuning import VOCAB, IndependentDrift, dataset, lora_model, make_tiny_model, training_args

BUDGET = 0.02


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _key(name: str) -> str:
    return canonical_name(name) + ("" if name.endswith(".weight") else ".weight")


def _low_rank(shape, rank: int, generator) -> torch.Tensor:
    return torch.randn(shape[0], rank, generator=generator) @ torch.randn(rank, shape[1], generator=generator)


def _alignment_deltas(weights: dict[str, torch.Tensor], shape: str, size: float) -> dict[str, torch.Tensor]:
    """A delta D per layer with ||D|| = size·||W||: ``full`` rank, rank 2 (``low``), or rank 2 plus 5% of full-rank
    noise (``gap``: a clear gap after the second singular value, so that the top-2 subspace is well defined)."""
    g = torch.Generator().manual_seed(11)
    out = {}
    for name, w in weights.items():
        if shape == "full":
            d = torch.randn(w.shape, generator=g)
        else:
            d = _low_rank(w.shape, 2, g)
            if shape == "gap":
                noise = torch.randn(w.shape, generator=g)
                d = d + noise * (0.05 * float(d.norm()) / float(noise.norm()))
        out[name] = d * (size * float(w.norm()) / float(d.norm()))
    return out


class Snapshot(TrainerCallback):
    """Effective weights at ``on_step_end``, in the position it holds among the callbacks."""

    def __init__(self, model):
        self.model = model
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(IndependentDrift.effective(self.model))


class Before(Snapshot):
    """Listed before SlowTuningCallback: the weights as the optimizer left them."""


class After(Snapshot):
    """Listed after it: the corrected weights."""


def _projector(d: torch.Tensor, rank: int, full_tensor: bool):
    """(project, D_k): the test's own P and the rank-k alignment delta."""
    if full_tensor and rank == 0:
        unit = d / d.norm()
        return (lambda x: (x * unit).sum() * unit), d
    u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
    k = rank if rank > 0 else int((s > 1e-4 * s[0]).sum())
    basis = u[:, :k].float()
    return (lambda x: basis @ (basis.T @ x)), basis @ (basis.T @ d)


def _four_bit_lora(tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    make_tiny_model(VOCAB, hidden_size=64).save_pretrained(tmp_path / "aligned")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "aligned", quantization_config=quant, device_map="cpu")
    return lora_model(model=base)


def _saved_weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


@pytest.mark.parametrize("kind,rank", [("full", 0), ("full", 2), ("lora", 0), ("qlora", 0)])
def test_direction_moves_only_the_subspace_component_and_keeps_the_budget(tmp_path, kind, rank):
    model = _four_bit_lora(tmp_path) if kind == "qlora" else make_tiny_model(VOCAB) if kind == "full" else lora_model()
    start = IndependentDrift.effective(model)
    if kind == "qlora":  # the aligned weights as saved (fp32), not the NF4 copy in the model
        saved = _saved_weights(tmp_path / "aligned")
        aligned = {n: saved[_key(n).removeprefix("base_model.model.")] for n in start}
    else:
        aligned = start
    # LoRA: a low-rank D (a merged LoRA alignment); full tensors: a full-rank one, or one with a top-2 subspace
    deltas = _alignment_deltas(aligned, "low" if kind != "full" else "gap" if rank else "full", 0.01)
    save_file({_key(n): (aligned[n] - deltas[n]).contiguous() for n in aligned}, str(tmp_path / "ref.safetensors"))

    slowed = SLowEDArguments(slow_tuning_rule="direction", slow_tuning_budget=BUDGET, slow_tuning_direction_rank=rank,
                             slow_tuning_reference=str(tmp_path / "ref.safetensors"))
    callback = SlowTuningCallback(slowed)
    before, after = Before(model), After(model)
    trainer = Trainer(model=model, args=training_args(tmp_path / "out", 8), train_dataset=dataset(),
                      callbacks=[before, callback, after])
    trainer.train()

    projectors = {n: _projector(deltas[n], rank, kind == "full") for n in deltas}
    bound, moved_orth = 0, 0.0
    for pre, post in zip(before.steps, after.steps):
        for name, (project, d_k) in projectors.items():
            d_before, d_after = pre[name] - start[name], post[name] - start[name]
            k_norm2 = float((d_k * d_k).sum())
            undo_before = max(0.0, -float((d_before * d_k).sum())) / k_norm2
            undo_after = max(0.0, -float((d_after * d_k).sum())) / k_norm2
            assert undo_after <= BUDGET * (1 + 1e-3), (name, undo_before, undo_after)
            change = d_after - d_before
            outside = change - project(change)
            assert float(outside.norm()) <= 1e-4 * float(d_before.norm()) + 1e-7, name
            bound += undo_before > BUDGET * (1 + 1e-3)
            moved_orth = max(moved_orth, float((d_after - project(d_after)).norm()) / k_norm2**0.5)
    assert bound > 0 and callback.projections_total > 0  # the budget bit
    assert moved_orth > 5 * BUDGET  # the orthogonal part is not held to the budget


def test_four_bit_alignment_direction_comes_from_the_saved_weights(tmp_path):
    from peft.utils.integrations import dequantize_module_weight

    model = _four_bit_lora(tmp_path)
    saved = _saved_weights(tmp_path / "aligned")
    g = torch.Generator().manual_seed(5)
    names = [k for k, v in saved.items() if v.ndim == 2 and "proj" in k]
    # an alignment delta of 0.2% of ||W||, rank 2: far below NF4's rounding error
    deltas = {k: _low_rank(saved[k].shape, 2, g) for k in names}
    deltas = {k: d * (0.002 * float(saved[k].norm()) / float(d.norm())) for k, d in deltas.items()}
    save_file({k: (saved[k] - deltas[k]).contiguous() for k in names}, str(tmp_path / "ref.safetensors"))

    slowed = SLowEDArguments(slow_tuning_rule="direction", slow_tuning_reference=str(tmp_path / "ref.safetensors"))
    callback = SlowTuningCallback(slowed)
    callback.anchor(model)
    layers = {u.name.split("[")[0] + ".weight": u for u in callback.units}
    checked = 0
    for key, d in deltas.items():
        u = layers[key]
        d_hat = (u.basis.float() @ u.direction.float()) if u.basis is not None else u.direction.float()
        assert u.basis is not None and u.basis.shape[1] == 2  # the rank-2 subspace, not the NF4 noise's full rank
        cosine = float((d_hat * d).sum() / (d_hat.norm() * d.norm()))
        assert cosine > 0.99, (key, cosine)
        # what the old code measured: the dequantized NF4 base minus the reference
        base = u.layer.get_base_layer()
        noisy = dequantize_module_weight(base).float() - (saved[key] - d)
        assert float((noisy * d).sum() / (noisy.norm() * d.norm())) < 0.5
        checked += 1
    assert checked == len(names) == 14


def test_a_quantized_base_without_saved_weights_is_refused(tmp_path):
    model = _four_bit_lora(tmp_path)
    saved = _saved_weights(tmp_path / "aligned")
    save_file({k: v.contiguous() for k, v in saved.items()}, str(tmp_path / "ref.safetensors"))
    for f in (tmp_path / "aligned").glob("*.safetensors"):
        f.unlink()  # the aligned model's files are gone: only the NF4 copy is left
    slowed = SLowEDArguments(slow_tuning_rule="direction", slow_tuning_reference=str(tmp_path / "ref.safetensors"))
    with pytest.raises(ValueError, match="aligned_weights"):
        SlowTuningCallback(slowed).anchor(model)
