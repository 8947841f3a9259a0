"""``trl-safedistill train --config RECIPE.yaml``: parse -> load -> train -> save, TRL-script style.

Also ``accelerate launch -m trl_safedistill.train --config RECIPE.yaml``. The parser is TRL's
``TrlParser`` over (:class:`DistillScriptArguments`, :class:`SafeDistillConfig`, ``trl.ModelConfig``):
the YAML sets values, command-line flags override them. QLoRA comes from ``ModelConfig``
(``load_in_4bit``, ``bnb_4bit_quant_type: nf4``, ``use_peft``, ``lora_*``) through TRL's
``get_quantization_config`` / ``get_peft_config``. ``model_name_or_path: embedded-default`` selects
the offline SmolLM2-135M-Instruct. A rerun into an ``output_dir`` with checkpoints resumes from the newest
complete one (:mod:`trl_safedistill.checkpoints`; one a kill cut short is skipped); ``--overwrite_output_dir``
starts from step 0 instead, ``--resume_from_checkpoint`` takes ``true`` or a checkpoint folder.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, get_peft_config, get_quantization_config

from .config import SafeDistillConfig
from .data.safety_mix import SafetyMixArguments
from .errors import UserError
from .formats.compressed import ratio_key
from .recipe import RecipeParser, check_model_name
from .records import DEFAULT_ANSWER_PHRASES, LoadReport, RationaleRecord, load_jsonl


@dataclass
class DistillScriptArguments(SafetyMixArguments):
    """Where the rationales come from, and the optional refusal mix (Safety-Tuned LLaMAs baseline).

    ``dataset_name``: a JSONL file (``.jsonl`` / ``.jsonl.gz``), ``bbh-cot`` (the shipped teacher
    rationales, training split), ``mini`` (40 program-written rationales over five task families,
    shipped for quick offline runs), or a Hugging Face dataset (hub name or local folder). For
    ``distill_format: compressed`` it is the output of ``trl-safedistill compress`` (a JSONL file or a
    dataset with its ``compressed`` column), whose compressed rationales are kept by record id.
    """

    dataset_name: str = field(default="bbh-cot", metadata={"help": "JSONL path, 'bbh-cot', 'mini', or a HF dataset name/path."})
    dataset_config: str | None = field(default=None, metadata={"help": "HF dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    column_map: str | None = field(
        default=None,
        metadata={"help": 'JSON object mapping record fields to columns, e.g. {"question": "input", "cot": "prediction"}.'},
    )
    answer_phrases: list[str] = field(
        default_factory=lambda: list(DEFAULT_ANSWER_PHRASES),
        metadata={"help": "Phrases at which a single chain-of-thought string is split into rationale and answer."},
    )
    bbh_cot_tasks: list[str] | None = field(default=None, metadata={"help": "bbh-cot tasks to use (default: all 14)."})
    max_train_records: int | None = field(default=None, metadata={"help": "Use at most this many records."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start from step 0 in an output_dir that holds checkpoints (they are removed); by default "
                          "a run resumes from the newest complete one."},
    )


def load_records(
    script_args: DistillScriptArguments,
    skip_invalid: bool,
    compressions: dict[str, dict[str, str]] | None = None,
) -> tuple[list[RationaleRecord], LoadReport]:
    """The training records named by ``script_args`` (validated; see :mod:`trl_safedistill.records`).

    With ``compressions`` (a dict), each row's ``compressed`` mapping (``trl-safedistill compress``
    output) is stored there under its record id.
    """
    from .dataset import keep_compressions

    report = LoadReport()
    column_map = _column_map(script_args.column_map)
    name = script_args.dataset_name
    if name == "bbh-cot":
        from .data.bbh_cot import load_bbh_cot

        records = load_bbh_cot(script_args.dataset_train_split if script_args.dataset_train_split != "all" else "all",
                               tasks=script_args.bbh_cot_tasks)
        report.kept = len(records)
    elif name == "mini" or name.endswith((".jsonl", ".jsonl.gz", ".json")) or Path(name).is_file():
        if name != "mini" and not Path(name).is_file():
            raise UserError(f"dataset_name: {name}: file not found; give a JSONL file, 'bbh-cot', 'mini' or a dataset")
        if name == "mini":
            name = str(Path(__file__).parent / "resources" / "mini_rationales.jsonl")
        records = load_jsonl(name, column_map=column_map, answer_phrases=script_args.answer_phrases,
                             skip_invalid=skip_invalid, report=report,
                             on_record=keep_compressions(compressions, name) if compressions is not None else None)
    else:
        from datasets import load_dataset
        from datasets.exceptions import DatasetNotFoundError

        from .errors import one_line
        from .records import validate_rows

        try:
            dataset = load_dataset(name, name=script_args.dataset_config, split=script_args.dataset_train_split)
        except (FileNotFoundError, ConnectionError, DatasetNotFoundError) as error:
            raise UserError(
                f"dataset_name: '{name}' is not a JSONL file, 'bbh-cot', 'mini' or a dataset found here "
                f"({one_line(error)}); check the name (offline, only local folders and cached datasets load)"
            ) from error
        records = validate_rows(((i + 1, row) for i, row in enumerate(dataset)), source=name, column_map=column_map,
                                answer_phrases=script_args.answer_phrases, skip_invalid=skip_invalid, report=report,
                                on_record=keep_compressions(compressions, name) if compressions is not None else None)
    if script_args.max_train_records is not None:
        records = records[: script_args.max_train_records]
    if script_args.refusal_mix_fraction > 0:
        from .data.offline import advbench_goals, safety_split
        from .data.safety_mix import mix_refusals

        prompts = safety_split(advbench_goals(), "align")  # never an evaluated prompt
        records = mix_refusals(records, script_args.refusal_mix_fraction, prompts, seed=script_args.refusal_mix_seed)
    if not records:
        raise UserError(f"{name}: no valid rationale record to train on" + (f" ({report.summary()})" if report.skipped else ""))
    return records, report


def _column_map(value: str | None) -> dict[str, str] | None:
    """``column_map`` parsed: a JSON object of record field -> column name."""
    if not value:
        return None
    try:
        mapping = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as error:
        raise UserError(f"column_map: not valid JSON ({error.msg} at column {error.colno}): write it like "
                        '{"question": "input", "cot": "prediction"}') from None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise UserError('column_map: expected a JSON object of field -> column names, like {"question": "input"}')
    return mapping


def make_parser() -> RecipeParser:
    """TRL's parser over the three dataclasses; its mistakes are one-line errors naming the recipe file and key."""
    return RecipeParser((DistillScriptArguments, SafeDistillConfig, ModelConfig))


def model_card(script_args: DistillScriptArguments, args: SafeDistillConfig, model_args: ModelConfig, n_records: int) -> str:
    """A short model card naming the method, data and settings."""
    slowed = f"entropy mask {args.entropy_mask_mode}, slow tuning {args.slow_tuning_rule}"
    peft = f"LoRA r={model_args.lora_r} alpha={model_args.lora_alpha}" if model_args.use_peft else "full fine-tuning"
    quant = " (4-bit NF4 QLoRA)" if model_args.load_in_4bit else ""
    return "\n".join([
        "---",
        "library_name: peft" if model_args.use_peft else "library_name: transformers",
        "tags: [trl, trl-safedistill, cot-distillation]",
        "---",
        f"# {Path(args.output_dir).name}",
        "",
        f"Chain-of-thought distillation with trl-safedistill: format `{args.distill_format}`"
        + (f" (CasCoD, alpha={args.cascade_alpha})" if args.distill_format == "cascade" else "")
        + (f" (TokenSkip, ratios {', '.join(ratio_key(g) for g in args.compression_ratios)})"
           if args.distill_format == "compressed" else "") + f"; {slowed}.",
        "",
        f"- base model: `{model_args.model_name_or_path}`",
        f"- training: {peft}{quant}, lr {args.learning_rate}, steps {args.max_steps}, epochs {args.num_train_epochs}, "
        f"batch {args.per_device_train_batch_size} x accumulation {args.gradient_accumulation_steps}, seed {args.seed}",
        f"- data: `{script_args.dataset_name}` ({n_records} rationale records), answer phrase `{args.answer_phrase}`",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    check_model_name(model_args.model_name_or_path)
    return run(script_args, training_args, model_args)


def run(script_args: DistillScriptArguments, training_args: SafeDistillConfig, model_args: ModelConfig) -> int:
    from datasets import Dataset

    from .checkpoints import callback_files, resolve_resume
    from .models import load_tokenizer, resolve_model_path
    from .trainer import SafeDistillTrainer

    # Decided before anything loads, so a bad --resume_from_checkpoint fails at once (CheckpointError, one line)
    resume = resolve_resume(training_args.output_dir, training_args.resume_from_checkpoint,
                            overwrite=script_args.overwrite_output_dir, extra_files=callback_files(training_args))
    compressions = {} if training_args.distill_format == "compressed" else None
    records, report = load_records(script_args, training_args.skip_invalid_records, compressions)
    if report.skipped:
        print(report.summary(script_args.dataset_name), file=sys.stderr)
    model_path = resolve_model_path(model_args.model_name_or_path)
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        training_args.model_init_kwargs["device_map"] = _kbit_device_map()
    rows = [r.to_dict() for r in records]
    if compressions and any(compressions.values()):  # the trainer reads them back from this column, by record id
        rows = [{**row, "compressed": compressions.get(row["id"])} for row in rows]
    train_dataset = Dataset.from_list(rows)
    trainer = SafeDistillTrainer(
        model=model_path,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=load_tokenizer(model_path),
        quantization_config=quantization_config,
        peft_config=get_peft_config(model_args),
    )
    if trainer.is_world_process_zero():
        if resume.message:
            trainer.accelerator.print(resume.message)
        for folder in resume.remove:  # --overwrite_output_dir: the previous run's checkpoints
            shutil.rmtree(folder, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.train(resume_from_checkpoint=resume.checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        Path(training_args.output_dir, "README.md").write_text(
            model_card(script_args, training_args, model_args, len(records)), encoding="utf-8"
        )
        trainer.accelerator.print(f"saved to {training_args.output_dir}")
    trainer.end()
    return 0


def _kbit_device_map():
    """Where a 4-bit model goes: this process's GPU under accelerate, else the CPU (bitsandbytes runs NF4 there)."""
    import torch
    from accelerate import PartialState

    if torch.cuda.is_available():
        return {"": PartialState().local_process_index}
    return {"": "cpu"}


if __name__ == "__main__":
    from .errors import run_command

    sys.exit(run_command(main, sys.argv[1:], prog="trl_safedistill.train"))
