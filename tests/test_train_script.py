"""The training entry point: every recipe parses with the real parser; short runs of each format."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file

from trl_safedistill.dataset import OverlongRecordError
from trl_safedistill.records import RecordError
from trl_safedistill.train import main, make_parser

RECIPES = sorted(Path(__file__).resolve().parents[1].glob("recipes/*/*.yaml"))
# Distillation recipes (the alignment recipe has its own parser, tested with `align`)
TRAIN_RECIPES = [r for r in RECIPES if r.parent.name not in ("accelerate", "sweep") and r.stem != "align"]


def test_recipes_exist_for_every_student_and_format():
    names = {(r.parent.name, r.stem) for r in TRAIN_RECIPES}
    for student in ("qwen2.5-1.5b-instruct", "llama-3.2-1b-instruct", "bloomz-1b1", "embedded-default"):
        for method in ("standard", "cascade", "answer_first", "slowed", "adaptive"):
            assert (student, method) in names


@pytest.mark.parametrize("recipe", TRAIN_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_parses_with_the_real_parser(recipe):
    script_args, args, model_args = make_parser().parse_args_and_config(args=["--config", str(recipe), "--bf16", "false"])
    assert args.distill_format in ("standard", "cascade", "answer_first", "compressed", "adaptive")
    if args.distill_format == "compressed":  # trained on `trl-safedistill compress` output, TokenSkip's ratios
        assert script_args.dataset_name.endswith(".jsonl") and args.compression_ratios == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    else:
        assert script_args.dataset_name == "bbh-cot"
    if recipe.parent.name == "embedded-default":
        if args.slow_tuning_rule != "off":  # protects the alignment made by `trl-safedistill align`
            assert model_args.model_name_or_path == "outputs/embedded-default/aligned/merged"
            assert args.slow_tuning_reference == "embedded-default"
        elif (args.entropy_mask_mode != "off" or args.safe_lora or args.asft or script_args.refusal_mix_fraction > 0
              or recipe.stem == "lower_lr"):
            # the masking ablation, the baselines and the lower-lr control start from the same aligned model
            assert model_args.model_name_or_path.endswith("aligned/merged")
        else:
            assert model_args.model_name_or_path == "embedded-default"
        assert args.use_cpu
    else:
        # QLoRA for the paper students: 4-bit NF4, LoRA
        assert model_args.load_in_4bit and model_args.bnb_4bit_quant_type == "nf4" and model_args.use_peft
    if recipe.stem == "slowed":  # the equal-effort sweep's SLowED choice (SLOWED_DEFAULTS; README), with CasCoD
        assert args.entropy_mask_mode == "fraction" and args.entropy_mask_quantile == 0.5
        assert (args.slow_tuning_rule, args.slow_tuning_unit, args.slow_tuning_budget) == ("project", "reference", 0.25)
        assert args.distill_format == "cascade" and args.slow_tuning_reference


def test_cli_flags_override_the_yaml():
    recipe = RECIPES[0] if RECIPES[0].parent.name != "accelerate" else TRAIN_RECIPES[0]
    _, args, _ = make_parser().parse_args_and_config(
        args=["--config", str(recipe), "--learning_rate", "0.123", "--cascade_alpha", "0.7", "--bf16", "false"]
    )
    assert args.learning_rate == 0.123 and args.cascade_alpha == 0.7


def write_records(path, n=6):
    rows = [
        {"id": f"x{i}", "question": f"What is {i} times 2?", "rationale": f"{i} doubled is {2 * i}.", "answer": str(2 * i)}
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def common_flags(tmp_path, model, fmt):
    return [
        "--model_name_or_path", str(model), "--dataset_name", str(write_records(tmp_path / "r.jsonl")),
        "--distill_format", fmt, "--output_dir", str(tmp_path / "out"), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--use_cpu", "true", "--bf16", "false", "--report_to", "none",
        "--save_strategy", "no", "--logging_steps", "1", "--gradient_checkpointing", "false", "--max_length", "128",
    ]


@pytest.mark.parametrize("fmt", ["standard", "cascade", "answer_first"])
def test_two_step_lora_run_per_format_on_tiny_model(tmp_path, tiny_model_dir, fmt):
    flags = common_flags(tmp_path, tiny_model_dir, fmt) + ["--use_peft", "--lora_r", "4", "--lora_target_modules", "all-linear",
                                                          "--learning_rate", "0.05"]
    assert main(flags) == 0
    out = tmp_path / "out"
    adapter = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in key and adapter[key].abs().sum() > 0 for key in adapter)  # the adapter learnt something
    card = (out / "README.md").read_text()
    assert f"format `{fmt}`" in card and "LoRA r=4" in card
    history = json.loads((out / "trainer_state.json").read_text())["log_history"] if (out / "trainer_state.json").exists() else None
    assert history is None or history


def test_qlora_run_on_tiny_model(tmp_path, tiny_model_dir):
    """NF4 4-bit base + LoRA: bitsandbytes runs it on the CPU, so QLoRA is covered without a GPU."""
    flags = common_flags(tmp_path, tiny_model_dir, "cascade") + [
        "--use_peft", "--lora_r", "4", "--lora_target_modules", "all-linear", "--load_in_4bit", "--bnb_4bit_quant_type",
        "nf4", "--dtype", "float32", "--learning_rate", "0.05",
    ]
    assert main(flags) == 0
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["r"] == 4
    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert any("lora_B" in key and adapter[key].abs().sum() > 0 for key in adapter)


@pytest.mark.slow
def test_two_step_run_on_the_embedded_default(tmp_path):
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "embedded-default" / "cascade.yaml"
    flags = ["--config", str(recipe), "--max_steps", "2", "--max_train_records", "4", "--per_device_train_batch_size", "2",
             "--max_length", "160", "--dataset_name", "mini", "--output_dir", str(tmp_path / "emb"), "--save_strategy", "no", "--logging_steps", "1"]
    assert main(flags) == 0
    adapter = load_file(tmp_path / "emb" / "adapter_model.safetensors")
    assert any("lora_B" in key and adapter[key].abs().sum() > 0 for key in adapter)


def test_refusal_mix_option_adds_the_requested_share_of_align_split_refusals():
    from trl_safedistill.data.offline import advbench_goals, safety_split
    from trl_safedistill.train import DistillScriptArguments, load_records

    records, _ = load_records(DistillScriptArguments(dataset_name="mini", refusal_mix_fraction=0.2), skip_invalid=False)
    refusals = [r for r in records if r.task == "refusal"]
    assert len(records) == 50 and len(refusals) == 10  # 10 / 50 = 20%
    evaluated = set(safety_split(advbench_goals(), "eval"))
    assert not evaluated & {r.question for r in refusals}


def test_skip_invalid_records_skips_broken_lines_and_lists_them(tmp_path, tiny_model_dir, capsys):
    """``--skip_invalid_records`` skips a line that is not JSON or not UTF-8 too, and says which lines it skipped."""
    data = write_records(tmp_path / "broken.jsonl")
    lines = data.read_bytes().splitlines()
    lines[1] = lines[1][:20]  # a line cut short: not JSON
    lines[3] = lines[3].replace(b"times", b"fois \xe9")  # a Latin-1 byte: not UTF-8
    data.write_bytes(b"\n".join(lines) + b"\n")
    flags = common_flags(tmp_path, tiny_model_dir, "standard") + ["--learning_rate", "0.01", "--dataset_name", str(data)]
    with pytest.raises(RecordError, match=r"broken\.jsonl:2: not valid JSON"):
        main(flags)
    assert main(flags + ["--skip_invalid_records", "true"]) == 0
    err = capsys.readouterr().err
    assert f"skipped 2 invalid records of {data} at lines 2, 4 (" in err and "kept 4" in err


def test_an_overlong_record_stops_train_before_training_by_default(tmp_path, tiny_model_dir):
    data = write_records(tmp_path / "long.jsonl")
    long_row = {"id": "long", "question": "Count.", "rationale": " ".join(["one two three"] * 60), "answer": "3"}
    data.write_text(data.read_text() + json.dumps(long_row) + "\n")
    flags = common_flags(tmp_path, tiny_model_dir, "cascade") + ["--dataset_name", str(data)]
    with pytest.raises(OverlongRecordError, match=r"1 of 7 records are longer than max_length 128 .*record 'long'"):
        main(flags)
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists() and not (tmp_path / "out" / "model.safetensors").exists()
    assert main(flags + ["--overlong", "truncate_rationale"]) == 0


def test_qlora_run_with_safe_lora_and_asft_on_tiny_model(tmp_path, tiny_model_dir, monkeypatch):
    """The paper students' baseline recipes (safe_lora.yaml, asft.yaml) on an NF4 base, through the train script:
    AsFT's penalty is logged every step, and Safe LoRA (threshold 1: every layer) leaves each saved B in the column
    space of its layer's rank-1 alignment matrix V = W_aligned - W_unaligned, W_aligned read from the student's
    saved folder (the NF4 copy would give a full-rank V)."""
    import torch
    from safetensors.torch import save_file

    from trl_safedistill.methods.safe_lora import REPORT_FILE
    from trl_safedistill.trainer import SafeDistillTrainer

    logged: list[dict] = []
    original_log = SafeDistillTrainer.log

    def recording_log(self, logs, *args, **kwargs):
        logged.append(logs)  # the dict itself: AsftCallback.on_log adds its penalty to it
        return original_log(self, logs, *args, **kwargs)

    monkeypatch.setattr(SafeDistillTrainer, "log", recording_log)
    weights = load_file(str(next(tiny_model_dir.glob("*.safetensors"))))
    g = torch.Generator().manual_seed(0)
    directions = {k: torch.randn(w.shape[0], generator=g) for k, w in weights.items() if w.ndim == 2}
    unaligned = {k: (w - 0.01 * torch.outer(directions[k], torch.randn(w.shape[1], generator=g))).contiguous()
                 for k, w in weights.items() if w.ndim == 2}
    save_file(unaligned, str(tmp_path / "unaligned.safetensors"))
    flags = common_flags(tmp_path, tiny_model_dir, "cascade") + [
        "--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--load_in_4bit",
        "--bnb_4bit_quant_type", "nf4", "--dtype", "float32", "--learning_rate", "0.05",
        "--safe_lora", "true", "--safe_lora_reference", str(tmp_path / "unaligned.safetensors"),
        "--safe_lora_threshold", "1.0", "--asft", "true", "--asft_reference", str(tmp_path / "unaligned.safetensors"),
        "--asft_lambda", "0.5",
    ]
    assert main(flags) == 0
    penalties = [entry["asft/penalty"] for entry in logged if "asft/penalty" in entry]
    assert len(penalties) == 2 and penalties[0] == 0.0 < penalties[1]  # B = 0 before the first step
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert report["projected"] == len(report["layers"]) == 4  # q_proj and v_proj of 2 layers
    adapter = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    checked = 0
    for key, b in adapter.items():
        if "lora_B" in key:
            u = directions[re.sub(r"^base_model\.model\.|\.lora_B.*$", "", key) + ".weight"]
            u, b = u / u.norm(), b.float()  # the adapter may be saved in bf16: tolerance of its rounding
            assert b.abs().sum() > 0 and torch.allclose(b, torch.outer(u, u @ b), atol=1e-2 * float(b.abs().max()))
            checked += 1
    assert checked == 4
