"""Safe LoRA (arXiv 2405.16833): which layers are projected, and what the projection does, on hand-made matrices.

Three LoRA layers (out 3, in 2, r 1) share one alignment matrix ``V = [[1, 2], [0, 0], [0, 0]]``, so the paper's
``Ĉ = V·Vᵀ/||V||_F = diag(√5, 0, 0)``. With ``A = [1, 0]`` and ``B`` = e1, e2, (e1 + e2)/√2 the similarities of
``Ĉ·B·A`` and ``B·A`` are 1, 0 and 1/√2: threshold 0.5 projects the second layer only, 0.8 the second and third.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from trl_safedistill.methods.alignment import apply_c, layer_projections, projection_from_delta
from trl_safedistill.methods.safe_lora import REPORT_FILE, project_layers, select_layers, similarity

V = torch.tensor([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
B_COLUMNS = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2**-0.5, 2**-0.5, 0.0]]


class ThreeLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = (torch.nn.Linear(2, 3, bias=False) for _ in range(3))

    def forward(self, x):
        return self.l1(x) + self.l2(x) + self.l3(x)


def hand_made(tmp_path):
    """A peft model of three LoRA layers with the B columns above, and the saved aligned / unaligned weights."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = ThreeLayers()
    aligned = {f"l{i}.weight": base.get_submodule(f"l{i}").weight.detach().clone() for i in (1, 2, 3)}
    save_file(aligned, str(tmp_path / "aligned.safetensors"))
    save_file({k: (w - V).contiguous() for k, w in aligned.items()}, str(tmp_path / "unaligned.safetensors"))
    model = get_peft_model(base, LoraConfig(r=1, lora_alpha=2, target_modules=["l1", "l2", "l3"]))
    with torch.no_grad():
        for i, column in enumerate(B_COLUMNS, start=1):
            layer = model.base_model.model.get_submodule(f"l{i}")
            layer.lora_A["default"].weight.copy_(torch.tensor([[1.0, 0.0]]))
            layer.lora_B["default"].weight.copy_(torch.tensor(column)[:, None])
    return model


def test_the_approximate_projection_is_the_papers_c():
    basis, weights = projection_from_delta(V, "approximate")
    c_hat = V @ V.T / V.norm()
    left = torch.randn(3, 2)
    assert torch.allclose(apply_c(left, basis, weights), c_hat @ left, atol=1e-6)
    basis, weights = projection_from_delta(V, "exact")  # the orthogonal projector onto V's column space (e1)
    assert torch.allclose(apply_c(left, basis, weights), torch.diag(torch.tensor([1.0, 0.0, 0.0])) @ left, atol=1e-6)


def test_similarity_from_grams_equals_the_flattened_cosine():
    g = torch.Generator().manual_seed(0)
    left, projected, right = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g), torch.randn(3, 5, generator=g)
    expected = torch.nn.functional.cosine_similarity((projected @ right).reshape(1, -1), (left @ right).reshape(1, -1))
    assert similarity(left, projected, right) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize("threshold,projected", [(0.5, [False, True, False]), (0.8, [False, True, True]),
                                                 (1.0, [True, True, True]), (-0.1, [False, False, False])])
def test_exactly_the_layers_at_or_below_the_threshold_are_projected(tmp_path, threshold, projected):
    model = hand_made(tmp_path)
    layers = layer_projections(model, str(tmp_path / "unaligned.safetensors"), str(tmp_path / "aligned.safetensors"),
                               "approximate", "safe_lora")
    records = project_layers(layers, threshold)
    assert [r["similarity"] for r in records] == pytest.approx([1.0, 0.0, 2**-0.5], abs=1e-6)
    assert [r["projected"] for r in records] == projected
    c_hat = V @ V.T / V.norm()
    for layer, column, was in zip(layers, B_COLUMNS, projected):
        b = torch.tensor(column)[:, None]
        expected = c_hat @ b if was else b
        assert torch.allclose(layer.unit.B.detach(), expected, atol=1e-6)
        assert torch.allclose(layer.unit.A.detach(), torch.tensor([[1.0, 0.0]]))  # A is never touched


def test_number_selection_takes_the_lowest_similarities():
    assert select_layers([0.9, 0.1, 0.5, 0.3], threshold=0.0, num_layers=2) == [False, True, False, True]
    assert select_layers([0.9, 0.1, 0.5], threshold=0.5) == [False, True, True]


def test_a_model_without_lora_is_refused(tmp_path):
    save_file({"l1.weight": torch.zeros(3, 2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="LoRA"):
        layer_projections(ThreeLayers(), str(tmp_path / "w.safetensors"), str(tmp_path / "w.safetensors"),
                          "approximate", "safe_lora")


def test_on_a_4bit_base_the_alignment_matrix_is_read_in_saved_precision(tmp_path):
    """QLoRA (the paper students' recipes): every layer's C on an NF4 base equals C from the full-precision weights,
    because W_aligned is read from the saved files (here the model's own folder), never from the NF4 copy, whose
    rounding would swamp an alignment delta of 0.2% of ||W|| (checked: V from the dequantized base points elsewhere);
    with no saved aligned tensor the quantized base is refused."""
    from bitsandbytes.functional import dequantize_4bit
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from .conftest import make_tiny_model

    make_tiny_model(64, hidden_size=64).save_pretrained(tmp_path / "aligned")
    saved = load_file(str(next((tmp_path / "aligned").glob("*.safetensors"))))
    g = torch.Generator().manual_seed(3)
    deltas = {}
    for key, w in saved.items():
        if key.endswith(("q_proj.weight", "v_proj.weight")):
            low_rank = torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1], generator=g)
            deltas[key] = 0.002 * w.norm() * low_rank / low_rank.norm()
    save_file({k: (saved[k] - d).contiguous() for k, d in deltas.items()}, str(tmp_path / "unaligned.safetensors"))
    unaligned = str(tmp_path / "unaligned.safetensors")

    def with_lora(model):
        return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))

    full = with_lora(AutoModelForCausalLM.from_pretrained(tmp_path / "aligned"))
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    four = with_lora(AutoModelForCausalLM.from_pretrained(tmp_path / "aligned", quantization_config=quant,
                                                          device_map="cpu"))
    for mode in ("approximate", "exact"):
        reference = layer_projections(full, unaligned, str(tmp_path / "aligned"), mode, "safe_lora")
        quantized = layer_projections(four, unaligned, None, mode, "asft")  # the model's own folder
        assert len(reference) == len(quantized) == len(deltas) and all(q.unit.quantized for q in quantized)
        for a, b in zip(reference, quantized):
            c_a = a.basis @ torch.diag(a.weights) @ a.basis.T
            c_b = b.basis @ torch.diag(b.weights) @ b.basis.T
            assert torch.allclose(c_a, c_b, atol=1e-5 * float(c_a.abs().max())), a.unit.name

    layer = four.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    nf4_delta = dequantize_4bit(layer.weight.data, layer.weight.quant_state).float() - \
        (saved["model.layers.0.self_attn.q_proj.weight"] - deltas["model.layers.0.self_attn.q_proj.weight"])
    true_delta = deltas["model.layers.0.self_attn.q_proj.weight"]
    assert float(torch.nn.functional.cosine_similarity(nf4_delta.flatten(), true_delta.flatten(), dim=0)) < 0.5

    save_file({"unrelated": torch.zeros(2, 2)}, str(tmp_path / "elsewhere.safetensors"))
    with pytest.raises(ValueError, match="quantized base"):
        layer_projections(four, unaligned, str(tmp_path / "elsewhere.safetensors"), "approximate", "safe_lora")


@pytest.mark.parametrize("distill_format", ["standard", "cascade", "answer_first", "compressed", "adaptive"])
def test_safe_lora_asft_and_the_direction_rule_train_with_every_format(tmp_path, tiny_tokenizer, distill_format):
    """Issue 17 item 3: the baselines are SafeDistillConfig options for every format, beside the direction rule. Per
    format: AsFT's penalty is logged at each step (0 while B = 0, then > 0), the direction rule's drift is logged, and
    Safe LoRA (threshold 1: every layer) leaves each saved B in the column space of its alignment matrix."""
    from datasets import Dataset
    from peft import LoraConfig
    from safetensors.torch import load_file

    from trl_safedistill.config import SafeDistillConfig
    from trl_safedistill.data.bbh_cot import load_bbh_cot
    from trl_safedistill.formats import FORMATS
    from trl_safedistill.trainer import SafeDistillTrainer

    from .conftest import make_tiny_model

    assert distill_format in FORMATS and len(FORMATS) == 5  # a new format joins this list
    model = make_tiny_model(len(tiny_tokenizer), seed=5)
    model.save_pretrained(tmp_path / "aligned")
    g = torch.Generator().manual_seed(1)
    # an alignment delta of rank 1 per matrix, so the alignment matrix's column space is a single known direction
    deltas = {n: 0.01 * torch.outer(torch.randn(p.shape[0], generator=g), torch.randn(p.shape[1], generator=g))
              for n, p in model.named_parameters() if p.ndim == 2}
    save_file({n: (p.detach() - deltas[n]).contiguous() for n, p in model.named_parameters() if p.ndim == 2},
              str(tmp_path / "unaligned.safetensors"))
    rows = [r.to_dict() for r in load_bbh_cot("train")[::300][:4]]
    extra = {}
    if distill_format == "compressed":
        for row in rows:
            words = row["rationale"].split()
            row["compressed"] = {"0.5": " ".join(words[::2])}
        extra = {"compression_ratios": [0.5, 1.0]}
    if distill_format == "adaptive":
        extra = {"router_steps": 2, "router_batch_size": 2, "router_label_rule": "answer_loss"}
    reference = str(tmp_path / "unaligned.safetensors")
    args = SafeDistillConfig(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
        use_cpu=True, report_to=[], logging_steps=1, save_strategy="no", seed=0, lr_scheduler_type="constant",
        distill_format=distill_format, max_length=512, overlong="skip", **extra,
        safe_lora=True, safe_lora_reference=reference, safe_lora_threshold=1.0,
        asft=True, asft_reference=reference, asft_lambda=0.5,
        slow_tuning_rule="direction", slow_tuning_budget=0.5, slow_tuning_reference=reference,
        aligned_weights=str(tmp_path / "aligned"),
    )
    trainer = SafeDistillTrainer(model, args, train_dataset=Dataset.from_list(rows), processing_class=tiny_tokenizer,
                                 peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    trainer.train()
    steps = [e for e in trainer.state.log_history if "loss" in e]
    assert len(steps) == 2 and steps[0]["asft/penalty"] == 0.0 < steps[1]["asft/penalty"]
    assert any(k.startswith("slow_tuning/") for k in steps[1])
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert report["projected"] == len(report["layers"]) == 4
    assert all(math.isfinite(r["similarity"]) for r in report["layers"])
    trainer.save_model(str(tmp_path / "student"))
    saved = load_file(str(tmp_path / "student" / "adapter_model.safetensors"))
    checked = 0
    for key, b in saved.items():
        if "lora_B" not in key:
            continue
        name = key.split("base_model.model.")[1].split(".lora_B")[0] + ".weight"
        direction = torch.linalg.svd(deltas[name], full_matrices=False)[0][:, :1]  # the column space of V (rank 1)
        assert b.abs().max() > 0
        torch.testing.assert_close(direction @ (direction.T @ b), b, rtol=1e-4, atol=1e-6)
        checked += 1
    assert checked == 4
