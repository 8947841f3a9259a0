"""SLowED through SafeDistillTrainer: resume equality, metrics in the logs, the embedded default."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from datasets import Dataset
from peft import LoraConfig

from trl_safedistill.config import SafeDistillConfig
from trl_safedistill.train import main
from trl_safedistill.trainer import SafeDistillTrainer

from .conftest import make_tiny_model
from .test_trainer_loss import RECORDS


def slowed_args(output_dir, **kwargs):
    values = dict(
        output_dir=str(output_dir), distill_format="cascade", entropy_mask_mode="fraction", entropy_mask_quantile=0.5,
        slow_tuning_rule="project", slow_tuning_budget=0.02, slow_tuning_budget_growth=2.0, learning_rate=5e-2,
        per_device_train_batch_size=2, max_steps=4, use_cpu=True, report_to=[], logging_steps=1, save_strategy="steps",
        save_steps=2, gradient_checkpointing=False, seed=0, num_train_epochs=1, shuffle_dataset=False,
        lr_scheduler_type="constant",
    )
    values.update(kwargs)
    return SafeDistillConfig(**values)


def drift_by_step(history):
    return {e["step"]: (e["slow_tuning/drift_max"], e["slow_tuning/projections_total"]) for e in history
            if "slow_tuning/drift_max" in e}


def test_interrupted_and_resumed_run_reports_the_same_drift(tmp_path, tiny_tokenizer):
    dataset = Dataset.from_list([r.to_dict() for r in RECORDS[:4]])
    base = make_tiny_model(len(tiny_tokenizer), seed=5)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")

    full = SafeDistillTrainer(copy.deepcopy(base), slowed_args(tmp_path / "full"), train_dataset=dataset,
                              processing_class=tiny_tokenizer, peft_config=lora)
    full.train()
    expected = drift_by_step(full.state.log_history)
    assert sorted(expected) == [1, 2, 3, 4] and expected[4][1] > 0  # the budget bit

    first = SafeDistillTrainer(copy.deepcopy(base), slowed_args(tmp_path / "cut", max_steps=2), train_dataset=dataset,
                               processing_class=tiny_tokenizer, peft_config=lora)
    first.train()
    assert (tmp_path / "cut" / "checkpoint-2" / "slow_tuning_anchor.safetensors").exists()
    resumed = SafeDistillTrainer(copy.deepcopy(base), slowed_args(tmp_path / "cut"), train_dataset=dataset,
                                 processing_class=tiny_tokenizer, peft_config=lora)
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-2"))
    got = drift_by_step(resumed.state.log_history)
    for step in (3, 4):
        assert got[step][0] == pytest.approx(expected[step][0], rel=1e-4)
        assert got[step][1] == expected[step][1]


@pytest.mark.slow
def test_slowed_cascade_on_the_embedded_default_logs_its_metrics(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from trl_safedistill.models import embedded_default_path

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "embedded-default" / "slowed.yaml"
    out = tmp_path / "slowed"
    # The recipe starts from `trl-safedistill align`'s model and protects its delta to the embedded default. Here the
    # embedded default is the start and a perturbed copy stands in for the pre-alignment weights: a known delta D.
    generator = torch.Generator().manual_seed(0)
    weights = load_file(next(embedded_default_path().glob("*.safetensors")))
    reference = {k: (v + 1e-3 * torch.randn(v.shape, generator=generator) if v.ndim == 2 and "proj" in k else v).contiguous()
                 for k, v in weights.items()}
    save_file(reference, str(tmp_path / "reference.safetensors"))
    # 2 records -> 4 cascade sequences, one batch of 4: each step sees rationale and answer segments
    assert main(["--config", str(recipe), "--model_name_or_path", "embedded-default",
                 "--slow_tuning_reference", str(tmp_path / "reference.safetensors"), "--slow_tuning_budget", "1e-6", "--warmup_steps", "0",
                 "--dataset_name", "mini", "--max_steps", "2", "--max_train_records", "2",
                 "--per_device_train_batch_size", "4", "--max_length", "384", "--output_dir", str(out), "--save_strategy", "steps", "--save_steps", "2",
                 "--logging_steps", "1"]) == 0
    history = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    step_logs = [e for e in history if "loss" in e]
    assert len(step_logs) == 2
    for entry in step_logs:
        assert 0 < entry["entropy_mask/masked_fraction"] < 1
        # a budget that binds: about half the layers move against a random D, and each is limited to 1e-6 of ||D||
        assert entry["slow_tuning/drift_max"] <= 1e-6 * (1 + 1e-3) and entry["slow_tuning/drift_max_before"] > 1e-6
        assert entry["slow_tuning/projections_step"] > 0
        assert "loss_rationale" in entry and "loss_answer" in entry
    drift_log = (out / "slow_tuning_drift.jsonl").read_text().splitlines()
    assert len(drift_log) >= 2
