"""SafeDistillTrainer: TRL's SFTTrainer with per-segment CoT-distillation losses and SLowED.

The loss is computed from TRL's fused LM head (``model(**inputs, fused_lm_head=True)``), which gives
per-token ``log_probs``, ``entropy`` and ``label_mask`` without building the B·T·V logits. Each
target token t has a segment s(t) in {rationale, answer} (from the dataset's ``segment_ids``) and a
keep bit k_t (1 unless low-entropy masking drops it). With ``nll_t = -log p(y_t | y_<t, x)``:

* pooled (``standard``, ``answer_first``; TRL's SFT loss when nothing is masked)::

      L = sum_t k_t * nll_t / N

* mixed (CasCoD, Dai et al. 2024, ``cascade``)::

      L = (1 - alpha) * sum_{t in R} k_t * nll_t / N_R  +  alpha * sum_{t in A} k_t * nll_t / N_A

(a batch without answer tokens contributes no answer term; ``cascade`` rows of one record are
shuffled independently, so keep batches large enough to hold both kinds) where N, N_R, N_A count
the *kept* target tokens of the whole optimizer step: every micro-batch of
the gradient-accumulation window and, with ``average_tokens_across_devices``, every rank. Summing the
micro-batch losses therefore gives the loss of one big batch (gradient-accumulation invariance). The
counts are taken in :meth:`get_batch_samples`, before the forward passes. When low-entropy masking
is on and the window has several micro-batches, the keep bits depend on the model, so a no-grad
forward over the window computes them first (a documented cost: one extra forward per micro-batch,
only in that case); with one micro-batch per step they come from the training forward itself. Either
way mode ``fraction`` takes its quantile over the same tokens (the whole window, every rank; see
:mod:`~trl_safedistill.methods.entropy_mask`).

Several processes (DDP): each rank's loss is its share of the global sums over the global counts, multiplied
by the number of processes, since DDP averages the ranks' gradients; with or without ``num_items_in_batch``
(a model that takes no loss kwargs gets per-micro-batch counts, still summed across ranks). A real two-process
run gives the losses and weights of one process on the same global batch (``tests/test_multiprocess.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from trl import SFTTrainer

from .config import SafeDistillConfig
from .dataset import (
    OverlongRecordError,
    OverlongReport,
    SegmentCollator,
    is_record_dataset,
    records_from_rows,
    tokenize_records,
)
from .errors import UserError
from .formats import FORMAT_FILE, Segment, format_settings, get_format
from .records import LoadReport

#: Low-entropy masking statistics logged per step (prefixed ``entropy_mask/``).
LOGGED_MASK_STATS = ("masked_fraction", "entropy_kept_mean", "entropy_masked_mean", "entropy_threshold")


class SafeDistillTrainer(SFTTrainer):
    """SFTTrainer for chain-of-thought distillation; takes the same arguments as [`~trl.SFTTrainer`].

    ``train_dataset`` may hold rationale records (columns ``question``, ``rationale``, ``answer`` and
    optionally ``id``, ``task``, ``choices``, ``description``): they are validated, rendered in
    ``args.distill_format`` and tokenized with segment ids. For ``compressed`` the rows also carry the
    ``compressed`` column of ``trl-safedistill compress`` (``{"0.5": text, ...}``), kept by record id.
    A dataset already tokenized by :func:`~trl_safedistill.dataset.tokenize_records` (with
    ``segment_ids``) is used as is, and any other SFT dataset (text, messages, prompt/completion) is
    prepared by TRL, all its targets pooled.
    """

    _tag_names = ["trl", "sft", "trl-safedistill"]
    _name = "SafeDistill"

    def __init__(self, model: Any, args: SafeDistillConfig | None = None, *pargs: Any, **kwargs: Any):
        if args is None:
            model_id = model if isinstance(model, str) else model.config._name_or_path
            args = SafeDistillConfig(f"{str(model_id).split('/')[-1]}-SafeDistill")
        elif not isinstance(args, SafeDistillConfig):
            raise TypeError(f"SafeDistillTrainer needs a SafeDistillConfig, got {type(args).__name__}")
        if args.packing:
            raise ValueError("packing=True is not supported: segment ids would cross packed sequence boundaries.")
        #: dataset name -> what the ``overlong`` policy did there; logged once as ``overlong/<name>``
        self.overlong_reports: dict[str, OverlongReport] = {}
        self._overlong_logged = False
        #: ``adaptive``: record id -> mode (the router's labels, from the starting student), the records per dataset
        #: name, the raw datasets waiting for those labels, and the router trained after distillation
        self.router_modes: dict[str, str] | None = None
        self._adaptive_records: dict[str, list] = {}
        self._adaptive_pending: dict[str, Any] = {}
        self.router = None
        super().__init__(model, args, *pargs, **kwargs)
        if self._adaptive_pending:
            self._label_adaptive()
        self.data_collator = SegmentCollator(self.data_collator)
        self._window_counts: torch.Tensor | None = None
        self._window_counts_final = False
        self.slow_tuning = None
        if args.slow_tuning_rule != "off":
            from .methods.slow_tuning import SlowTuningCallback
            from .methods.slow_tuning.callback import check_sharding

            check_sharding(self.model, self.accelerator)  # FSDP, quantized base + ZeRO-3: refused now, not mid-run
            self.slow_tuning = SlowTuningCallback(args)
            self.add_callback(self.slow_tuning)
        from .methods import baseline_callbacks  # Safe LoRA, AsFT: the safety baselines beside SLowED

        for callback in baseline_callbacks(args):
            self.add_callback(callback)
        #: refusal watched during training (``safety_monitor_*`` fields; :mod:`trl_safedistill.safety_monitor`)
        self.safety_monitor = None
        if args.safety_monitor_every > 0 or args.safety_monitor_each_epoch:
            from .safety_monitor import SafetyMonitorCallback

            self.safety_monitor = SafetyMonitorCallback.from_config(args).attach(self)

    # ----------------------------------------------------------------------------------------------- data
    @staticmethod
    def distill_format(args: SafeDistillConfig, compressions: Mapping[str, Mapping[str, str]] | None = None,
                       modes: Mapping[str, str] | None = None):
        """The :class:`~trl_safedistill.formats.DistillFormat` configured by ``args``.

        ``compressions`` (``compressed`` only): record id -> ``{ratio_key(g): compressed rationale}``, the
        dataset's ``compressed`` column. Each record's ratio is ``choose_ratio(id, args.compression_ratios,
        args.seed)``; a record drawn at a ratio below 1 that it has no text for raises ``ValueError`` naming it.
        ``modes`` (``adaptive`` only): record id -> ``standard`` | ``answer_first``, the router's labels.
        """
        compressed = args.distill_format == "compressed"
        return get_format(
            args.distill_format,
            answer_phrase=args.answer_phrase,
            marker=args.answer_first_marker if args.distill_format in ("answer_first", "adaptive") else None,
            ratios=args.compression_ratios if compressed else None,
            seed=args.seed,
            compressions=dict(compressions or {}) if compressed else None,
            modes=dict(modes or {}) if args.distill_format == "adaptive" and modes is not None else None,
        )

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        columns = dataset.column_names or []
        if is_record_dataset(columns) and args.distill_format == "adaptive" and self.router_modes is None:
            self._adaptive_pending[dataset_name] = dataset  # rendered once the starting student has labelled it
            return dataset
        if is_record_dataset(columns):
            compressions = {} if args.distill_format == "compressed" else None
            source = f"{dataset_name} dataset"
            loaded = LoadReport()
            records = records_from_rows(
                dataset, source=source, skip_invalid=args.skip_invalid_records, compressions=compressions, report=loaded
            )
            if loaded.skipped:
                _main_print(loaded.summary(source))
            if not records:
                raise UserError(f"The {dataset_name} dataset has no valid rationale record to train on.")
            report = self.overlong_reports[dataset_name] = OverlongReport(args.overlong, args.max_length)
            dataset = tokenize_records(
                records,
                getattr(processing_class, "tokenizer", processing_class),
                self.distill_format(args, compressions, self.router_modes),
                max_length=args.max_length,
                truncation_mode=args.truncation_mode,
                overlong=args.overlong,
                report=report,
                source=source,
            )
            if report.count:
                _main_print(report.summary(source))
            if args.shuffle_dataset:
                dataset = dataset.shuffle(seed=args.seed)
            return dataset
        if "segment_ids" in columns and args.max_length is not None:
            dataset = self._apply_overlong_to_tokens(dataset, args, dataset_name)
        return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)

    def _apply_overlong_to_tokens(self, dataset, args: SafeDistillConfig, dataset_name: str):
        """``overlong`` on a pre-tokenized dataset (``segment_ids``): stop, leave out or cut rows over ``max_length``."""
        source = f"{dataset_name} dataset"
        lengths = [len(ids) for ids in dataset["input_ids"]]
        over = [index for index, length in enumerate(lengths) if length > args.max_length]
        report = self.overlong_reports[dataset_name] = OverlongReport(args.overlong, args.max_length, total=len(lengths))
        ids = dataset["record_id"] if "record_id" in dataset.column_names else [f"row {i + 1}" for i in range(len(lengths))]
        report.records = [(str(ids[index]), lengths[index]) for index in over]
        if not over:
            return dataset
        if args.overlong == "error":
            raise OverlongRecordError(
                f"{source}: {len(over)} of {len(lengths)} tokenized rows are longer than max_length {args.max_length} "
                f"(first: {report.records[0][0]}, {report.records[0][1]} tokens), and cutting them would lose the answer: "
                "raise max_length, or set overlong: skip (leave them out) or overlong: truncate (cut them anyway)"
            )
        if args.overlong == "truncate_rationale":
            raise UserError(
                f"{source}: overlong: truncate_rationale needs a dataset of records (question, rationale, answer), not "
                "tokenized rows; use error, skip or truncate here"
            )
        _main_print(report.summary(source))
        if args.overlong == "skip":
            drop = set(over)
            return dataset.select([index for index in range(len(lengths)) if index not in drop])
        dataset = dataset.map(lambda row: {"segment_ids": _truncate(row["segment_ids"], args)})
        return dataset.map(
            lambda row: {"input_ids": _truncate(row["input_ids"], args), "labels": _truncate(row["labels"], args)}
        )

    # ------------------------------------------------------------------------------------ adaptive thinking
    def _label_adaptive(self) -> None:
        """``adaptive``: label every pending record's mode with the starting student, then render the datasets.

        The labels (``router_label_rule``, :func:`~trl_safedistill.formats.router.label_records`) come from the model
        as it is before any training step, so a resumed run labels its records the same way.
        """
        from .formats.router import label_records

        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        model = self.accelerator.unwrap_model(self.model)
        modes: dict[str, str] = {}
        for name, dataset in self._adaptive_pending.items():
            records = records_from_rows(dataset, source=f"{name} dataset", skip_invalid=self.args.skip_invalid_records,
                                        report=LoadReport())
            self._adaptive_records[name] = records
            modes.update(label_records(model, tokenizer, records, self.args.router_label_rule,
                                       answer_phrase=self.args.answer_phrase, margin=self.args.router_loss_margin))
        self.router_modes = modes
        pending, self._adaptive_pending = self._adaptive_pending, {}
        for name, dataset in pending.items():
            prepared = self._prepare_dataset(dataset, self.processing_class, self.args, False, None, name)
            if name == "train":
                self.train_dataset = prepared
            elif isinstance(self.eval_dataset, dict):
                self.eval_dataset[name] = prepared
            else:
                self.eval_dataset = prepared

    def train(self, *pargs: Any, **kwargs: Any):
        """Trainer's ``train``; under ``adaptive``, the router is then trained on the distilled student (frozen)."""
        output = super().train(*pargs, **kwargs)
        if self.args.distill_format == "adaptive" and self._adaptive_records.get("train"):
            self.router, stats = self.train_router()
            self.log({f"router/{key}": value for key, value in stats.items()})
        return output

    def train_router(self):
        """A fresh :class:`~trl_safedistill.formats.router.SoftPromptRouter` fitted to the training records' modes."""
        from .formats.router import SoftPromptRouter, router_prompt, train_router

        args = self.args
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        model = self.accelerator.unwrap_model(self.model)
        records = self._adaptive_records["train"]
        router = SoftPromptRouter.for_model(model, args.router_virtual_tokens, seed=args.seed, label_rule=args.router_label_rule)
        stats = train_router(
            router, model, tokenizer, [router_prompt(tokenizer, r.question, r.description) for r in records],
            [self.router_modes[r.id] for r in records], steps=args.router_steps, learning_rate=args.router_learning_rate,
            batch_size=args.router_batch_size, seed=args.seed,
        )
        return router, stats

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "segment_ids" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "segment_ids"]

    # ---------------------------------------------------------------------------------------- token counts
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Collect the accumulation window, then count its (kept) target tokens per segment."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        masking = self.args.entropy_mask_mode != "off"
        if batch_samples and masking and len(batch_samples) > 1:
            self._prepass_keep_masks(batch_samples)
        self._window_counts = self._count_targets(batch_samples, device) if batch_samples else None
        # With masking and a single micro-batch, the kept counts come from the training forward itself
        self._window_counts_final = not masking or len(batch_samples) > 1
        return batch_samples, num_items_in_batch

    def _count_targets(self, batch_samples: list[dict], device) -> torch.Tensor:
        """Kept target tokens in the window: ``[N_rationale, N_answer, N_total]`` over micro-batches and ranks."""
        counts = torch.zeros(3, dtype=torch.long)
        for batch in batch_samples:
            targets = batch["labels"][..., 1:].ne(-100)
            if "keep_mask" in batch:
                targets = targets & batch["keep_mask"].cpu()
            segments = batch.get("segment_ids")
            if segments is None:
                counts[0] += int(targets.sum())
            else:
                segments = segments[..., 1:]
                counts[0] += int((targets & segments.ne(Segment.ANSWER)).sum())
                counts[1] += int((targets & segments.eq(Segment.ANSWER)).sum())
        counts[2] = counts[0] + counts[1]
        counts = counts.to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return counts

    @torch.no_grad()
    def _prepass_keep_masks(self, batch_samples: list[dict]) -> None:
        """Set every micro-batch's ``keep_mask`` from a no-grad forward, before the window's training forwards.

        In mode ``fraction`` the threshold is one quantile over the whole window (every micro-batch, every rank:
        :func:`~trl_safedistill.methods.entropy_mask.window_threshold`), the batch whose kept tokens normalise the
        loss; so the keep bits do not depend on how the step's batch is split into micro-batches and processes.
        """
        from .methods.entropy_mask import window_threshold

        passes = []
        for batch in batch_samples:
            inputs = self._prepare_inputs({k: v for k, v in batch.items() if k not in ("segment_ids", "keep_mask")})
            outputs = self.model(**inputs, use_cache=False, fused_lm_head=True)
            segments = self._mask_segments(outputs, batch["segment_ids"][..., 1:] if "segment_ids" in batch else None)
            passes.append((outputs.entropy.detach(), outputs.label_mask.bool(), segments, outputs.is_top1))
            del outputs
        threshold = None
        if self.args.entropy_mask_mode == "fraction":
            threshold = window_threshold(
                [p[0] for p in passes], [p[1] for p in passes], [p[2] for p in passes], self.args, self.accelerator
            )
        for batch, (entropy, target, segments, is_top1) in zip(batch_samples, passes):
            keep, stats = self._keep_mask_from(entropy, target, segments, is_top1, threshold)
            for key, value in stats.items():
                self._metrics["train"][key].append(float(value))
            batch["keep_mask"] = keep.cpu()

    @staticmethod
    def _mask_segments(outputs, segments: torch.Tensor | None) -> torch.Tensor:
        """Segment ids aligned with the fused head's targets (all rationale for a dataset without segments)."""
        if segments is None:
            return torch.full_like(outputs.label_mask, int(Segment.RATIONALE), dtype=torch.long)
        return segments.to(outputs.entropy.device)

    def _keep_mask(self, outputs, segments: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        target = outputs.label_mask.bool()
        if self.args.entropy_mask_mode == "off":
            return target, {}
        segments = self._mask_segments(outputs, segments)
        return self._keep_mask_from(outputs.entropy.detach(), target, segments, outputs.is_top1, None)

    def _keep_mask_from(self, entropy, target, segments, is_top1, threshold) -> tuple[torch.Tensor, dict[str, float]]:
        from .methods.entropy_mask import low_entropy_keep_mask

        keep, stats = low_entropy_keep_mask(
            entropy, target, segments, self.args, self.accelerator, is_top1=is_top1, threshold=threshold
        )
        return keep, {f"entropy_mask/{key}": stats[key] for key in LOGGED_MASK_STATS}

    # ------------------------------------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        segment_ids = inputs.pop("segment_ids", None)
        keep_mask = inputs.pop("keep_mask", None)
        if segment_ids is None and self.args.entropy_mask_mode == "off" and not self.args.uses_mixed_loss:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.compute_loss_func is not None or self.label_smoother is not None or self.args.loss_type != "nll":
            raise ValueError("SafeDistillTrainer computes its own loss: unset compute_loss_func, label smoothing, loss_type.")

        mode = "train" if model.training else "eval"
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        nll = -outputs.log_probs
        segments = segment_ids[..., 1:].to(nll.device) if segment_ids is not None else None
        if keep_mask is not None:
            keep, stats = keep_mask.to(nll.device) & outputs.label_mask.bool(), {}
        else:
            keep, stats = self._keep_mask(outputs, segments)
        keep = keep.to(nll.dtype)
        is_answer = segments.eq(Segment.ANSWER).to(nll.dtype) if segments is not None else torch.zeros_like(nll)

        counts = self._normalisers(keep, is_answer, num_items_in_batch)
        sum_rationale = (nll * keep * (1 - is_answer)).sum()
        sum_answer = (nll * keep * is_answer).sum()
        if self.args.uses_mixed_loss:
            alpha = self.args.cascade_alpha
            loss = (1 - alpha) * sum_rationale / counts[0].clamp(min=1) + alpha * sum_answer / counts[1].clamp(min=1)
        else:
            loss = (sum_rationale + sum_answer) / counts[2].clamp(min=1)
        if self._counts_are_global():
            # DDP averages the ranks' gradients; each rank's loss is its share of the global sum over the global count,
            # so the mean of the ranks' gradients needs this factor to be the gradient of the global loss.
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())

        self._log_token_metrics(mode, inputs, outputs, keep, is_answer, nll, stats)
        return (loss, outputs) if return_outputs else loss

    def _normalisers(self, keep: torch.Tensor, is_answer: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """``[N_R, N_A, N]``: the accumulation window's counts in training, this batch's counts otherwise.

        Without ``num_items_in_batch`` (a model that takes no loss kwargs) Trainer divides each micro-batch
        loss by the accumulation steps itself, so per-batch counts are used then, as TRL does.
        """
        if self.model.training and num_items_in_batch is not None and self._window_counts_final:
            return self._window_counts.to(keep.device, keep.dtype)
        n_answer = (keep * is_answer).sum()
        n_rationale = keep.sum() - n_answer
        counts = torch.stack([n_rationale, n_answer, keep.sum()]).detach()
        if self._counts_are_global():
            counts = self.accelerator.reduce(counts, reduction="sum")
        return counts

    def _counts_are_global(self) -> bool:
        """Whether the normalisers sum over every rank (training with ``average_tokens_across_devices`` on several
        processes): then, and only then, the loss is multiplied by the number of processes, with or without
        ``num_items_in_batch`` (the window's counts and the per-batch counts are both summed across ranks)."""
        return bool(self.model.training and self.args.average_tokens_across_devices and self.args.world_size > 1)

    def _log_token_metrics(self, mode, inputs, outputs, keep, is_answer, nll, stats) -> None:
        """TRL's metrics (entropy, token accuracy, tokens seen) plus per-segment losses and masking stats."""
        gather = self.accelerator.gather_for_metrics
        target = outputs.label_mask.to(nll.dtype)
        num_valid = gather(target.sum()).sum()
        metrics = self._metrics[mode]
        metrics["entropy"].append((gather((outputs.entropy.detach() * target).sum()).sum() / num_valid).item() if num_valid > 0 else 0.0)
        metrics["mean_token_accuracy"].append(
            (gather(outputs.is_top1.sum()).sum() / num_valid).item() if num_valid > 0 else 0.0
        )
        with torch.no_grad():
            for name, weight in (("rationale", target * (1 - is_answer)), ("answer", target * is_answer)):
                count = gather(weight.sum()).sum()
                if count > 0:
                    metrics[f"loss_{name}"].append((gather((nll.detach() * weight).sum()).sum() / count).item())
        for key, value in stats.items():
            metrics[key].append(float(value))
        if mode == "train":
            if "attention_mask" in inputs:
                tokens = gather(inputs["attention_mask"].sum()).sum().item()
            else:
                tokens = gather(torch.tensor(inputs["input_ids"].numel(), device=nll.device)).sum().item()
            self._total_train_tokens += tokens
        metrics["num_tokens"] = [self._total_train_tokens]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's metrics plus slow tuning's drift metrics, before the reporters (wandb, tensorboard) see them."""
        if self.slow_tuning is not None:
            logs.update(self.slow_tuning.pop_metrics())
        if not self._overlong_logged and self.overlong_reports:
            self._overlong_logged = True
            logs.update({f"overlong/{name}": float(report.count) for name, report in self.overlong_reports.items()})
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------ checkpoints
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """TRL's ``save_model``, plus the format settings evaluation prompts the student with
        (:data:`~trl_safedistill.formats.FORMAT_FILE`: format, answer phrase, answer-first marker)."""
        super().save_model(output_dir, _internal_call)
        if self.is_world_process_zero():
            from .atomic import write_json

            write_json(Path(output_dir or self.args.output_dir) / FORMAT_FILE, format_settings(self.distill_format(self.args)))
            if self.router is not None:
                from .formats.router import ROUTER_DIR

                self.router.save_pretrained(Path(output_dir or self.args.output_dir) / ROUTER_DIR)

    def _save_checkpoint(self, model, trial) -> None:
        """Write slow tuning's anchor into the checkpoint folder *before* transformers writes its own files.

        transformers writes ``trainer_state.json`` last and then deletes older checkpoints; callbacks' ``on_save``
        runs after both. Writing the anchor first makes ``trainer_state.json`` the last file of a complete
        checkpoint (:mod:`trl_safedistill.checkpoints`), so a kill can never leave the only surviving checkpoint
        without its anchor.
        """
        if self.slow_tuning is not None and self.slow_tuning.enabled and self.slow_tuning.units and self.args.should_save:
            directory = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            self.slow_tuning.save_anchor(directory)
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.slow_tuning is not None:
            self.slow_tuning.load_anchor(resume_from_checkpoint)


def _main_print(line: str) -> None:
    """One line on stderr, from the main process only (datasets are prepared before Trainer's accelerator exists)."""
    import sys

    from accelerate import PartialState

    if PartialState().is_main_process:
        print(line, file=sys.stderr, flush=True)


def _truncate(values: list[int], args: SafeDistillConfig) -> list[int]:
    if args.max_length is None or len(values) <= args.max_length:
        return values
    return values[: args.max_length] if args.truncation_mode == "keep_start" else values[-args.max_length :]
