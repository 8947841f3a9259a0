"""The demo pipeline: prepare -> align (+gate) -> step-0 probe -> distil each method -> evaluate -> report.

Every stage is cached in the run folder (:class:`~.stages.StageRunner`); training stages resume from their
last checkpoint after a kill. The evaluation stages run as one group, in worker processes on a CPU
(:mod:`.parallel`); each student's evaluation also gives the last point of its training curve. See
:mod:`trl_safedistill.demo` for the command line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .sizes import RunSize
from .stage_progress import Progress, StageProgressCallback
from .stages import StageRunner
from .variants import Method, methods_for, opt_in_methods, select

ALIGN_KEYS = ("model", "load_in_4bit", "use_peft", "lora_r", "lora_alpha", "lora_dropout", "align_steps", "align_batch",
              "align_lr", "align_max_length", "align_harmful", "align_benign", "gate_min_refusal", "gate_max_over_refusal",
              "gate_enforced", "n_gate", "align_answer_tokens", "safety_gen_tokens", "seed", "bf16", "eval_batch",
              "bootstrap_iters")
TRAIN_KEYS = ("model", "load_in_4bit", "use_peft", "lora_r", "lora_alpha", "lora_dropout", "distil_steps", "distil_batch",
              "distil_lr", "full_ft_lr", "lower_lrs", "max_length", "max_train_records", "refusal_mix_fraction", "keep_checkpoints", "curve_every", "seed", "bf16",
              "curve_n_harmful", "curve_n_ind", "curve_n_loss", "safety_gen_tokens")
EVAL_KEYS = ("n_safety", "n_ind_mc", "n_ind_gen", "ind_gen_by_seed", "n_ood_mc", "n_ood_gen", "n_nll", "nll_max_length", "safety_gen_tokens",
             "reasoning_gen_tokens", "eval_batch", "bootstrap_iters", "seed")
DATA_VERSION = 2  # 2: protocol calibration/test parts, capability calibration/test split


def _subset(size: RunSize, keys: Sequence[str]) -> dict[str, Any]:
    data = size.to_dict()
    return {k: data[k] for k in keys}


def _train_loss(train: dict[str, Any], step: int) -> float | None:
    """The logged training loss of ``step`` (the stage result's keys are strings once read back from JSON)."""
    losses = train["train_loss"]
    return losses.get(step, losses.get(str(step)))


def build_tiny_model(directory: Path, tokenizer, seed: int = 0) -> Path:
    """A 2-layer random Llama with the embedded tokenizer's vocabulary, saved with that tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


class DemoPipeline:
    """One demo run in ``run_dir`` at ``size``."""

    def __init__(self, size: RunSize, run_dir: Path | str, *, force: bool | set[str] = False,
                 method_names: list[str] | None = None, quiet: bool = False, command: str | None = None,
                 callbacks: dict[str, list] | None = None, slowed: dict[str, Any] | None = None):
        self.size = size
        self.run_dir = Path(run_dir)
        named = opt_in_methods(size, slowed) if method_names else []  # opt-in methods only when asked for by name
        self.methods: list[Method] = select(methods_for(size, slowed) + named, method_names)
        self.callbacks = callbacks or {}
        self.command = command or "trl-safedistill demo " + shlex.join(sys.argv[1:])
        stages = (["prepare", "align", "curve0"] + [f"distil:{m.name}" for m in self.methods]
                  + ["eval:aligned"] + [f"eval:{m.name}" for m in self.methods] + ["report"])
        self.progress = Progress(stages, quiet=quiet)
        self.runner = StageRunner(self.run_dir, self.progress, force)
        self._tokenizer = None
        self._prober = None

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ..models import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_name())
        return self._tokenizer

    def tokenizer_name(self) -> str:
        from ..models import embedded_default_path

        return str(embedded_default_path()) if self.size.model == "tiny-random" else self.size.model

    def data_dir(self) -> Path:
        return self.runner.stage_dir("prepare")

    def aligned_path(self) -> str:
        return self.runner.result("align")["merged"]

    def prober(self):
        if self._prober is None:
            from .probes import Prober

            calibration = self.runner.result("prepare")["safety_files"]["calibration"]
            self._prober = Prober.for_run(self.tokenizer, self.size, self.data_dir(), calibration)
        return self._prober

    def load(self, path: str):
        from .training import load_model

        return load_model(path, self.size)

    def eval_workers(self) -> int:
        """Evaluation worker processes: ``size.eval_workers`` on a CPU, 1 on a GPU (:mod:`.parallel`)."""
        import torch

        return 1 if torch.cuda.is_available() else max(1, self.size.eval_workers)

    # ------------------------------------------------------------------------------------------- stages
    def stage_prepare(self, directory: Path) -> dict[str, Any]:
        from ..models import resolve_model_path
        from .inputs import prepare_data

        if self.size.model == "tiny-random":
            base = str(build_tiny_model(directory / "tiny-model", self.tokenizer, self.size.seed))
        else:
            base = resolve_model_path(self.size.model)
        return {"base_model": base, **prepare_data(directory, self.tokenizer, self.size.max_length,
                                                   self.size.max_train_records, self.size.curve_n_loss)}

    def stage_align(self, directory: Path) -> dict[str, Any]:
        from trl import SFTConfig

        from ..atomic import write_jsonl
        from .align import (
            ALIGN_ANSWERED_SOURCES,
            AlignGateError,
            alignment_dataset,
            benign_answers,
            gate_verdict,
            measure_gate,
            protocol_prompts,
            train_alignment,
        )
        from .training import common_args, peft_config, quantization_config

        size = self.size
        base_path = self.runner.result("prepare")["base_model"]
        answers_file = directory / "benign_answers.jsonl"
        if answers_file.exists():  # a resumed stage keeps the answers it trained on
            from .inputs import read_jsonl

            rows = read_jsonl(answers_file)
            answered = [[(r["prompt"], r["answer"]) for r in rows if r["source"] == source] for source in ALIGN_ANSWERED_SOURCES]
            dropped = sum(1 for r in rows if r.get("dropped"))
        else:
            base = self.load(base_path)
            answered, dropped, rows = [], 0, []
            for source in ALIGN_ANSWERED_SOURCES:
                kept, lost = benign_answers(base, self.tokenizer, protocol_prompts(source), size.align_answer_tokens,
                                            size.eval_batch)
                answered.append(kept)
                dropped += lost
                rows += [{"source": source, "prompt": p, "answer": a} for p, a in kept]
            del base
            write_jsonl(answers_file, rows)
        args = SFTConfig(**common_args(size, directory / "trainer", size.align_steps, size.align_batch, size.align_lr,
                                       max(1, size.align_steps // 4)), max_length=size.align_max_length)
        dataset = alignment_dataset(size.align_harmful, size.align_benign, size.seed, answered)
        callbacks = [StageProgressCallback(self.progress), *self.callbacks.get("align", [])]
        merged = train_alignment(base_path, self.tokenizer, args, peft_config(size), dataset, callbacks,
                                 quantization_config(size))
        model = self.load(str(merged))
        summary = measure_gate(model, self.tokenizer, size.n_gate, size.safety_gen_tokens, size.eval_batch,
                               directory / "samples_gate.jsonl", bootstrap_iters=size.bootstrap_iters)
        verdict = {**gate_verdict(summary, size.gate_min_refusal, size.gate_max_over_refusal), "enforced": size.gate_enforced}
        self.progress.print(verdict["message"])
        if not verdict["passed"] and size.gate_enforced:
            raise AlignGateError(verdict["message"])
        return {"merged": str(merged), "gate": verdict, "calibration_safety": summary,
                "benign_answers": {"kept": sum(len(a) for a in answered), "dropped": dropped}}

    def stage_curve0(self, directory: Path) -> dict[str, Any]:
        point = self.prober()(self.load(self.aligned_path()), directory / "samples.jsonl")
        return {"step": 0, **point}

    def stage_distil(self, method: Method, directory: Path, stage: str | None = None, probe_last: bool = False,
                     probes: bool = True) -> dict[str, Any]:
        from ..data.safety_mix import mix_refusals
        from .inputs import load_records, read_jsonl
        from .training import distil, read_curve

        records = load_records(self.data_dir() / "train.jsonl")
        if method.refusal_mix_fraction:
            prompts = [row["prompt"] for row in read_jsonl(self.data_dir() / "align_prompts.jsonl")]
            records = mix_refusals(records, method.refusal_mix_fraction, prompts, self.size.seed)
        callbacks = [StageProgressCallback(self.progress), *self.callbacks.get(stage or f"distil:{method.name}", [])]
        method = method.resolved(self.runner.result("prepare")["base_model"])
        result = distil(method, self.size, self.aligned_path(), self.tokenizer, records, directory,
                        self.prober() if probes else None, callbacks, probe_last, probes)
        curve = [dict(self.runner.result("curve0"))] + read_curve(directory / "curve.jsonl")
        for point in curve:
            point["train_loss"] = _train_loss(result, point["step"])
        result["curve"] = curve
        result["probe_last"] = probe_last
        result["probes"] = probes
        result["records"] = len(records)
        return result

    def eval_job(self, name: str):
        """The :class:`~.parallel.EvalJob` of ``eval:<name>`` (``aligned`` or a method)."""
        from .parallel import EvalJob

        data = self.runner.result("prepare")
        common = {"tokenizer": self.tokenizer_name(), "start_model": self.aligned_path(), "size": self.size,
                  "data_dir": str(self.data_dir()), "ood": data["ood"]}
        if name == "aligned":
            return EvalJob(final=None, fmt="standard", **common)
        method = next(m for m in self.methods if m.name == name)
        return EvalJob(final=self.runner.result(f"distil:{name}")["final"], fmt=method.distill_format, **common)

    def run_evals(self) -> None:
        """Stage 4 for the aligned start and every student, in :meth:`eval_workers` processes (one group)."""
        from .parallel import run_in_workers, run_inline

        settings = _subset(self.size, EVAL_KEYS)
        names = ["aligned"] + [m.name for m in self.methods]
        stages = [(f"eval:{name}", settings, ("align",) if name == "aligned" else (f"distil:{name}",), name)
                  for name in names]
        workers = min(self.eval_workers(), len(names))
        self.progress.parallel["eval"] = workers

        def execute(pending):
            pending = [dataclasses.replace(p, payload=self.eval_job(p.payload)) for p in pending]
            return run_inline(pending, self.progress) if workers == 1 else run_in_workers(pending, self.progress, workers)

        self.runner.run_group("eval", stages, execute, workers)

    def stage_report(self, directory: Path) -> dict[str, Any]:
        from .run_report import write_report

        metrics = self.assemble()
        items = {m["name"]: self.runner.result(f"eval:{m['name']}")["items"] for m in metrics["models"]}
        return write_report(metrics, directory, items)

    # --------------------------------------------------------------------------------------------- run
    def assemble(self) -> dict[str, Any]:
        import torch

        from ..evaluation.protocol import REFERENCE_JUDGE, judge_agreement
        from .eval_stage import read_items
        from .run_report import item_flags

        r = self.runner

        def evaluated(name: str) -> dict[str, Any]:
            evaluation = r.result(f"eval:{name}")
            return {"metrics": evaluation["metrics"], "safety": evaluation["safety"],
                    "items": item_flags(read_items(Path(evaluation["items"])))}

        data = dict(r.result("prepare"))
        gate = r.result("align")["gate"]
        models = [{
            "name": "aligned", "label": "aligned start", "kind": "aligned", "family": "aligned", "format": "standard",
            "learning_rate": None, "settings": {}, "train": None, **evaluated("aligned"),
            "curve": [r.result("curve0")],
        }]
        for method in self.methods:
            train = r.result(f"distil:{method.name}")
            curve = list(train["curve"])
            models.append({
                "name": method.name, "label": method.label, "kind": "student", "family": method.family,
                "format": method.distill_format, "learning_rate": train["learning_rate"],
                "settings": {**method.config, "refusal_mix_fraction": method.refusal_mix_fraction},
                "train": {k: train[k] for k in ("steps", "resumed_from", "train_runtime", "records")},
                **evaluated(method.name), "curve": curve,
            })
        # This run's stages only: a run folder shared with `trl-safedistill sweep` also holds its sweep:* stages
        own = set(self.progress.stages)
        stage_seconds = {k: float(v["seconds"]) for k, v in r.state["stages"].items()
                         if v.get("status") == "done" and k in own and k != "report"}
        # Stages that ran concurrently count once, by their group's wall time; those of a group that an earlier,
        # interrupted invocation ran count in full (an upper bound)
        wall = sum(stage_seconds.values())
        groups = {}
        for group, info in r.state.get("groups", {}).items():
            members = [name for name in info["stages"] if name in stage_seconds]
            if members:
                wall += float(info["seconds"]) - sum(stage_seconds[name] for name in members)
                groups[group] = {"seconds": float(info["seconds"]), "workers": int(info["workers"]), "stages": members}
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        return {
            "schema_version": 2,
            "run": {
                "size": self.size.name, "model": self.size.model, "peft": self.size.use_peft, "command": self.command,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "wall_seconds": round(wall, 1), "stage_seconds": stage_seconds, "parallel_groups": groups,
                "settings": self.size.to_dict(), "device": device, "torch_threads": torch.get_num_threads(),
            },
            "data": {k: v for k, v in data.items() if k not in ("safety_files", "base_model")},
            "gate": gate,
            "judge": {"default": judge_agreement(), "reference": judge_agreement(REFERENCE_JUDGE)},
            "models": models,
            "evidence": {"claims": {}, "models": {}},
        }

    def run_start(self) -> None:
        """Stages 1-2 and the step-0 curve point: the data and the aligned start every student shares."""
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        size, r = self.size, self.runner
        import torch

        from .training import bf16_speed_warning, cpu_flags

        warning = bf16_speed_warning(size, torch.cuda.is_available(), cpu_flags())
        if warning:
            print(warning, file=sys.stderr, flush=True)
        data_fp = {"max_length": size.max_length, "model": size.model, "version": DATA_VERSION, "seed": size.seed,
                   "max_train_records": size.max_train_records, "curve_n_loss": size.curve_n_loss}
        r.run("prepare", data_fp, self.stage_prepare)
        r.run("align", _subset(size, ALIGN_KEYS), self.stage_align, depends=("prepare",))
        r.run("curve0", _subset(size, TRAIN_KEYS), self.stage_curve0, depends=("align",))

    def run_distil(self, method: Method, stage: str | None = None, probe_last: bool = False,
                   probes: bool = True) -> dict[str, Any]:
        """Train one method from the aligned start as a cached stage (``distil:<name>`` unless ``stage`` is given).

        ``probe_last``: measure the last step's curve point during training. Every caller does: the curves read
        calibration data and the final evaluation the test split, so no final evaluation can stand in for it.
        ``probes=False``: no curve point during training at all (the evidence run: its report reads none; the
        result's curve is the step-0 point alone).
        """
        stage = stage or f"distil:{method.name}"
        settings = {"method": method.__dict__, **_subset(self.size, TRAIN_KEYS), "probe_last": probe_last}
        if not probes:  # only then, so the stages cached before this switch keep their fingerprints
            settings["probes"] = False
        return self.runner.run(stage, settings, lambda d: self.stage_distil(method, d, stage, probe_last, probes),
                               depends=("align", "curve0"))

    def run(self) -> Path:
        """Run every stage (cached ones are skipped); returns the report folder."""
        size, r = self.size, self.runner
        self.run_start()
        for method in self.methods:
            self.run_distil(method, probe_last=True)
        self.run_evals()
        names = ["align", "curve0", "eval:aligned"] + [f"{k}:{m.name}" for m in self.methods for k in ("distil", "eval")]
        r.run("report", {"methods": [m.name for m in self.methods], "size": size.name}, self.stage_report, depends=tuple(names))
        return r.stage_dir("report")
