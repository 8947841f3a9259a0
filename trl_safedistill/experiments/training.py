"""Training stages: distil one student from the aligned start, with checkpoints, resume and curve points.

A stage trains into ``<stage>/trainer`` with Trainer checkpoints every ``curve_every`` steps (model, optimizer,
scheduler, RNG and, for slow tuning, its anchor); a killed stage is resumed from its last complete checkpoint with
``resume_from_checkpoint`` (one the kill cut short is skipped: :func:`last_checkpoint`), so finished steps are not
redone. The final weights (a LoRA adapter, or the whole
model under full fine-tuning) go to ``<stage>/final``.

An ``adaptive`` method (:mod:`trl_safedistill.formats.adaptive`) trains exactly as ``benchmarks/adaptive_tokens.py``
does, through :class:`~trl_safedistill.trainer.SafeDistillTrainer`: its records are labelled by the starting student
when the trainer is built, the student is distilled, then ``train`` fits the soft-prompt router on the distilled,
frozen student and ``save_model`` writes it to ``<stage>/final/router`` beside the adapter. :func:`load_student` and
:func:`load_student_router` load the two back for evaluation.

:class:`CurveCallback` takes a curve point (:class:`~.probes.Prober`: refusal, IND MC accuracy, held-out
rationale loss) every ``curve_every`` optimizer steps and at the last one, after slow tuning's correction of
that step, and appends it to ``<stage>/curve.jsonl``; a point recomputed after a resume replaces the old one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..checkpoints import callback_files, newest_complete_checkpoint
from .probes import Prober
from .sizes import RunSize
from .variants import Method


def last_checkpoint(output_dir: Path, args: Any = None) -> str | None:
    """The newest complete ``checkpoint-N`` folder in ``output_dir`` (``None`` when there is none).

    A checkpoint a kill cut short (:func:`~trl_safedistill.checkpoints.is_complete_checkpoint`; with ``args``, also
    the files its callbacks add, such as slow tuning's anchor) is skipped, with one line on stderr naming it, so a
    killed stage resumes from the checkpoint before it instead of failing on it.
    """
    scan = newest_complete_checkpoint(output_dir, callback_files(args))
    if scan.skipped:
        where = f"resuming from {scan.newest.name}" if scan.newest else "starting from step 0"
        print(f"{output_dir}: skipped incomplete {scan.skipped_text()}; {where}", file=sys.stderr, flush=True)
    return str(scan.newest) if scan.newest else None


def read_curve(path: Path) -> list[dict[str, Any]]:
    """Curve points by step (the last record of a step wins), sorted."""
    if not path.exists():
        return []
    points: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            point = json.loads(line)
            points[int(point["step"])] = point
    return [points[s] for s in sorted(points)]


class CurveCallback(TrainerCallback):
    """Appends a :class:`Prober` point to ``path`` every ``every`` steps and at the last step.

    ``probe_last=False`` leaves the last step out (no pipeline does: the final evaluation reads the test split, so it
    cannot give a calibration curve's last point).
    """

    def __init__(self, prober: Prober, every: int, path: Path, sample_log: Path | None = None, probe_last: bool = True):
        self.prober, self.every, self.path, self.sample_log = prober, max(1, every), path, sample_log
        self.probe_last = probe_last

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.every and step != state.max_steps:
            return
        if step == state.max_steps and not self.probe_last:
            return
        point = {"step": step, **self.prober(model, self.sample_log)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(point) + "\n")


#: CPU flags (``/proc/cpuinfo``) that give bf16 matrix products native speed.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags, or ``None`` where ``cpuinfo`` cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[-1].split()}


def bf16_speed_warning(size: RunSize, cuda: bool, flags: set[str] | None) -> str | None:
    """One line when ``size`` trains and evaluates in bf16 on a CPU without native bf16 (:data:`NATIVE_BF16_FLAGS`),
    else ``None``. There bf16 is emulated: on an AVX2 CPU (AMD EPYC, 2026-12-06) one calibration curve point of the
    ``evidence`` size took 182 s in bf16 against 43 s in float32, where an avx512_bf16 CPU ran bf16 2x faster than
    float32. The run keeps its dtype (every unit of a run must share it); the line says what to expect."""
    if not size.bf16 or cuda or flags is None or flags & set(NATIVE_BF16_FLAGS):
        return None
    return (f"warning: size '{size.name}' runs in bf16, and this CPU has no {' / '.join(NATIVE_BF16_FLAGS)}: bf16 is "
            "emulated here, about 4x slower than float32 (measured on an AVX2 CPU), and the size's timings in the "
            "README (measured on an avx512_bf16 CPU) grow about 8-fold. A new run can take --set bf16=false (its own "
            "results folder).")


def model_init_kwargs(size: RunSize) -> dict[str, Any]:
    return {"dtype": "bfloat16" if size.bf16 else "float32"}


def peft_config(size: RunSize):
    """LoRA on every linear layer (``None`` under full fine-tuning)."""
    if not size.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(r=size.lora_r, lora_alpha=size.lora_alpha, lora_dropout=size.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def quantization_config(size: RunSize):
    """4-bit NF4 (QLoRA) for the ``gpu`` size, else ``None``."""
    if not size.load_in_4bit:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16 if size.bf16 else torch.float32)


def quiet_trainer(trainer) -> None:
    """Under the demo's quiet console (:func:`.console.quiet_console`), drop the Trainer's console printer of log dicts
    (``PrinterCallback``, or ``ProgressCallback`` when tqdm is on): the stage's progress lines stand in for it, and the
    logged values stay in ``trainer.state.log_history`` and every checkpoint's ``trainer_state.json``."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .console import is_quiet

    if is_quiet():
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)


def common_args(size: RunSize, output_dir: Path, steps: int, batch: int, lr: float, save_steps: int) -> dict[str, Any]:
    """TrainingArguments shared by the demo's training stages (CPU-friendly, checkpointed, quiet)."""
    import torch

    return {
        "output_dir": str(output_dir),
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "learning_rate": lr,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": min(2, max(0, steps // 4)),
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": max(1, save_steps),
        "save_total_limit": None if size.keep_checkpoints else 1,  # kept: the evidence run evaluates early stops
        "activation_checkpointing": False,  # transformers' name (gradient_checkpointing is its deprecated alias)
        "use_cpu": not torch.cuda.is_available(),
        "bf16": size.bf16,
        "report_to": "none",
        "seed": size.seed,
        "data_seed": size.seed,
        "disable_tqdm": True,
        "dataset_num_proc": None,
        "model_init_kwargs": model_init_kwargs(size),
    }


def distil(
    method: Method,
    size: RunSize,
    start_model: str,
    tokenizer,
    records: Sequence,
    directory: Path,
    prober: Prober | None,
    callbacks: Sequence[TrainerCallback] = (),
    probe_last: bool = True,
    probes: bool = True,
) -> dict[str, Any]:
    """Train ``method`` from ``start_model``; resumes from the stage's last checkpoint. Returns the stage result.

    ``probe_last``: take the curve point of the last step too (see :class:`CurveCallback`).
    ``probes=False``: take no curve point at all (no :class:`CurveCallback`; checkpoints are still written every
    ``curve_every`` steps). A probe only reads the model in eval mode under ``no_grad``, so the trained weights are
    the same either way (tested); the evidence run, whose report reads no curve, saves a probe's time per point.
    """
    from datasets import Dataset

    from ..config import SafeDistillConfig
    from ..trainer import SafeDistillTrainer

    config = dict(method.config)
    lr = config.pop("learning_rate", size.distil_lr)
    if not size.use_peft:
        lr = lr * size.full_ft_lr / size.distil_lr
    trainer_dir = directory / "trainer"
    args = SafeDistillConfig(
        **common_args(size, trainer_dir, size.distil_steps, size.distil_batch, lr, size.curve_every),
        max_length=size.max_length,
        # The demo's records fit max_length in the standard format; a few cascade/answer_first sequences are a few
        # tokens longer and were cut at max_length in the measured runs: kept so (counted, printed) so numbers hold
        overlong="truncate",
        **config,
    )
    trainer = SafeDistillTrainer(
        model=start_model,
        args=args,
        train_dataset=Dataset.from_list([r.to_dict() for r in records]),
        processing_class=tokenizer,
        peft_config=peft_config(size),
        quantization_config=quantization_config(size),
    )
    if probes:
        trainer.add_callback(CurveCallback(prober, size.curve_every, directory / "curve.jsonl",
                                           directory / "samples.jsonl", probe_last))
    for callback in callbacks:
        trainer.add_callback(callback)
    quiet_trainer(trainer)
    resume = last_checkpoint(trainer_dir, args)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(directory / "final"))
    losses = {int(e["step"]): float(e["loss"]) for e in trainer.state.log_history if "loss" in e and "step" in e}
    runtime = next((e for e in reversed(trainer.state.log_history) if "train_runtime" in e), {})
    router = next((e for e in reversed(trainer.state.log_history) if "router/accuracy" in e), None)
    trainer.accelerator.free_memory()
    result = {
        "method": method.name,
        "steps": trainer.state.global_step,
        "learning_rate": lr,
        "resumed_from": int(Path(resume).name.split("-")[-1]) if resume else None,
        "train_loss": losses,
        "train_runtime": runtime.get("train_runtime"),
        "final": str(directory / "final"),
    }
    if router is not None:  # adaptive: the router's fit on its training labels (and their answer-first share)
        result["router"] = {k.removeprefix("router/"): v for k, v in router.items() if k.startswith("router/")}
    return result


def load_model(path: str, size: RunSize):
    """A saved full model (the aligned start) in the run's dtype, on the GPU when there is one, in eval mode.

    Under a 4-bit size it is quantized to NF4; :func:`load_student` loads every student's base through this function, so
    the aligned start and the students are evaluated in the same quantisation and a measured erosion is the training's,
    not NF4 rounding's."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if size.bf16 else torch.float32
    if size.load_in_4bit:  # bitsandbytes places the quantized weights itself; a 4-bit model refuses .to()
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=quantization_config(size)).eval()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def load_student(start_model: str, final: Path, size: RunSize):
    """The trained student for evaluation: the start model (loaded by :func:`load_model`, so in the same dtype and
    quantisation as the aligned start is evaluated in) plus the LoRA adapter (merged unless 4-bit), or the full model."""
    import torch
    from transformers import AutoModelForCausalLM

    if (Path(final) / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_model(start_model, size), str(final))
        if not size.load_in_4bit:
            # W + s·B·A folded in once: generation then runs one matmul per layer instead of three. Not under 4-bit,
            # where merging would re-quantize the sum and change the model being evaluated.
            model = model.merge_and_unload()
        return model.eval()
    model = AutoModelForCausalLM.from_pretrained(str(final), dtype=torch.bfloat16 if size.bf16 else torch.float32)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def load_student_router(final: Path | str, model):
    """The soft-prompt router saved beside an ``adaptive`` student (``<final>/router``), on ``model``'s device, or
    ``None`` when the student has none (every other format). It routes the model :func:`load_student` returns: the
    router was trained over the student with its LoRA adapter unmerged, and merging changes only float rounding."""
    from ..formats.router import ROUTER_DIR, WEIGHTS_FILE, SoftPromptRouter

    directory = Path(final) / ROUTER_DIR
    if not (directory / WEIGHTS_FILE).is_file():
        return None
    return SoftPromptRouter.from_pretrained(directory, device=model.get_input_embeddings().weight.device).eval()
