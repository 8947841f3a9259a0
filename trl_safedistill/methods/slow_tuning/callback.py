r"""Slow tuning's ``TrainerCallback`` (SLowED, arXiv 2508.09666): anchor, per-step check, resume, metrics.

:class:`SlowTuningCallback` keeps every unit's drift ``d = ||Δ||_F / U`` (:mod:`.units`) within the budget
``β_e = slow_tuning_budget · growth**e`` by its rule (:mod:`.rules`). It acts in ``on_step_end``, i.e. after
``optimizer.step()`` / ``lr_scheduler.step()`` / ``zero_grad()`` and before the next forward pass (transformers
5.24 ``_run_epoch``; ``on_step_end`` is also the first hook that sees the incremented ``global_step`` and
``epoch``, and it runs before ``_maybe_log_save_evaluate``, so logs and checkpoints of step t see the corrected
weights).

**Anchor and resume.** ``on_train_begin`` takes the anchor W0 (the trainable weights at the start of training).
The anchor and the callback's state go into ``{output_dir}/checkpoint-{global_step}`` (:mod:`.checkpoint`):
:class:`~trl_safedistill.trainer.SafeDistillTrainer` writes them before transformers' own files (so
``trainer_state.json`` stays the last file of a complete checkpoint); with a plain ``SFTTrainer``, ``on_save`` does. On resume the trainer calls :meth:`SlowTuningCallback.load_anchor` with the checkpoint
folder (from its ``_load_from_checkpoint`` override); if it does not, ``on_train_begin`` finds
``{output_dir}/checkpoint-{global_step}`` itself, and raises if there is no anchor there (re-anchoring at the
resumed weights would silently move the budget). A resumed run reports the same drift step for step.

**Metrics.** Every check stores ``slow_tuning/*`` values in :attr:`SlowTuningCallback.metrics`; the trainer
merges :meth:`SlowTuningCallback.pop_metrics` into ``logs`` in its ``log`` override (then every reporter sees
them). Without that, ``on_log`` adds them to ``logs`` and to ``state.log_history[-1]``. Per-layer drift of each
check goes to the drift log (:mod:`.log`, main process), one run per file: a fresh run starts a new log, a
resumed run continues the checkpoint's log from its step.

Multi-process: under DDP and DeepSpeed ZeRO-1/2 parameters are replicated, and every rank applies the same
deterministic correction. Under DeepSpeed ZeRO-3 the drift is computed on **full** parameters: the anchor and every
check run inside ``deepspeed.zero.GatheredParameters`` (:func:`full_parameters`; the anchor gathers every parameter
once, since a LoRA unit's ``||W0||`` needs its frozen base weight, a check only the trainable ones), so the numbers
are those of one process; a correction made there by rank 0 is written back to every rank's shard on exit (all
ranks compute the same one). Under every ZeRO stage a correction is also written into DeepSpeed's fp32 master
weights (``safe_set_full_fp32_param``), which the next optimizer step starts from. Cost: during a check every rank holds the full trainable parameters (small for LoRA),
and W0 of full fine-tuning is a full copy on every rank. Under FSDP2 the same holds with ``DTensor.full_tensor()``
as the gather: inside :func:`full_parameters` each module holds the full tensor, and on exit every rank writes its
own shard of the corrected value back into the sharded parameter (:func:`_gathered_dtensors`). FSDP1 and a
quantized base under ZeRO-3 or FSDP are refused when the trainer starts (:func:`check_sharding`), not mid-run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import torch
from transformers import TrainerCallback

from ..arguments import SLowEDArguments
from . import log as drift_log
from .checkpoint import STATE_FILE, has_state, read_checkpoint, write_checkpoint
from .reference import _Reference, aligned_source, aligned_weight, attach_reference, uses_reference
from .rules import apply_rule, epoch_budget
from .units import _FullUnit, _LoraUnit, _Unit, canonical_name, discover_units

logger = logging.getLogger(__name__)

PREFIX = "slow_tuning/"


def _zero3_parameters(model: torch.nn.Module | None, trainable_only: bool) -> list[torch.nn.Parameter]:
    if model is None:
        return []
    return [p for p in model.parameters() if hasattr(p, "ds_id") and (p.requires_grad or not trainable_only)]


def _write_masters(model: torch.nn.Module | None) -> None:
    """Copy the trainable parameters' current values into DeepSpeed's fp32 master copies (ZeRO-1/2/3, bf16
    optimizer); without this the next ``optimizer.step()`` would start from the uncorrected masters. No-op without
    DeepSpeed. Under ZeRO-3 call it inside :func:`full_parameters` (the values must be the full tensors)."""
    params = [p for p in model.parameters() if p.requires_grad and (hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"))] \
        if model is not None else []
    if not params:
        return
    from deepspeed.utils import safe_set_full_fp32_param

    for p in params:
        safe_set_full_fp32_param(p, p.data.float())


def _dtensor_parameters(model: torch.nn.Module | None, trainable_only: bool) -> list[tuple[torch.nn.Module, str, Any]]:
    """(module, attribute, parameter) of every FSDP2 parameter (a ``DTensor``) of ``model``, in module order."""
    if model is None:
        return []
    from torch.distributed.tensor import DTensor

    return [(module, attr, p) for module in model.modules() for attr, p in module._parameters.items()
            if isinstance(p, DTensor) and (p.requires_grad or not trainable_only)]


@contextlib.contextmanager
def _gathered_dtensors(params: list[tuple[torch.nn.Module, str, Any]], modify: bool) -> Iterator[None]:
    """FSDP2: inside, each module holds a plain full-tensor parameter (``DTensor.full_tensor()``, an all-gather)
    instead of its sharded one; on exit the sharded parameter is put back and, with ``modify``, first overwritten
    with its shard of the (possibly corrected) full tensor. Every rank computes the same correction, so each cuts
    its own shard from its own copy (``distribute_tensor(..., src_data_rank=None)``: no communication). The sharded
    parameter object stays the one FSDP2 and the optimizer hold; only its local values change.
    """
    from torch.distributed.tensor import distribute_tensor

    gathered: dict[int, tuple[Any, torch.nn.Parameter]] = {}  # a tied parameter (several modules) is gathered once
    slots = []
    for module, attr, sharded in params:
        if id(sharded) not in gathered:
            full = torch.nn.Parameter(sharded.full_tensor().detach().clone(), requires_grad=sharded.requires_grad)
            gathered[id(sharded)] = (sharded, full)
        module._parameters[attr] = gathered[id(sharded)][1]
        slots.append((module, attr, sharded))
    try:
        yield
    finally:
        with torch.no_grad():
            for sharded, full in gathered.values() if modify else ():
                shard = distribute_tensor(full.detach().to(sharded.dtype), sharded.device_mesh, sharded.placements,
                                          src_data_rank=None).to_local()
                sharded.to_local().copy_(shard)
            for module, attr, sharded in slots:
                module._parameters[attr] = sharded


@contextlib.contextmanager
def full_parameters(model: torch.nn.Module | None, modify: bool, trainable_only: bool = True) -> Iterator[Any]:
    """Inside: the model's sharded parameters (the trainable ones, or all) are full tensors on every rank.

    DeepSpeed ZeRO-3: ``deepspeed.zero.GatheredParameters``; with ``modify`` rank 0's values are partitioned back on
    exit (every rank computes the same correction). FSDP2 (``DTensor`` parameters): :func:`_gathered_dtensors`, each
    rank writing back its own shard. A collective: every rank must enter it. Without sharded parameters it gathers
    nothing. Yields a function to call after a correction, inside the block: it writes the corrected values into
    DeepSpeed's fp32 master weights (:func:`_write_masters`; ZeRO-1/2 too; FSDP2 has no separate masters).
    """
    sync = lambda: _write_masters(model)  # noqa: E731 - bound to this model
    dtensors = _dtensor_parameters(model, trainable_only)
    if dtensors:
        with _gathered_dtensors(dtensors, modify):
            yield sync
        return
    params = _zero3_parameters(model, trainable_only)
    if not params:
        yield sync
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None):
        yield sync


def check_sharding(model: torch.nn.Module, accelerator: Any) -> None:
    """Refuse, before training, the set-ups slow tuning cannot handle: FSDP1, and a quantized base under ZeRO-3 or
    FSDP2.

    FSDP2 parameters are DTensors sharded on dim 0 and are gathered for the anchor and each check
    (:func:`full_parameters`). FSDP1 flattens a module's parameters into one flat parameter, so no unit (a LoRA
    factor, a weight matrix) exists as a tensor to measure. A 4-bit / 8-bit base (bitsandbytes) under ZeRO-3 or FSDP
    cannot be gathered into the full weight that ``||W0||`` needs.
    """
    from ...errors import UserError

    state = getattr(accelerator, "state", None)
    kind = str(getattr(accelerator, "distributed_type", ""))
    quantized = [n for n, p in model.named_parameters() if type(p).__name__ in ("Params4bit", "Int8Params")]
    if "FSDP" in kind:
        plugin = getattr(state, "fsdp_plugin", None)
        if getattr(plugin, "fsdp_version", 1) != 2:
            raise UserError(
                "slow_tuning_rule is not supported under FSDP1 (flat parameters: no layer exists as a tensor to "
                "measure): set fsdp_version: 2 (recipes/accelerate/fsdp2.yaml), use DeepSpeed ZeRO-2/3 or DDP, or set "
                "slow_tuning_rule: off"
            )
        if quantized:
            raise UserError(
                f"slow_tuning_rule under FSDP needs full base weights, but the base is quantized (e.g. {quantized[0]}): "
                "use DDP for QLoRA"
            )
    plugin = getattr(state, "deepspeed_plugin", None)
    if "DEEPSPEED" in kind and plugin is not None and getattr(plugin, "zero_stage", 0) == 3 and quantized:
        raise UserError(
            f"slow_tuning_rule with DeepSpeed ZeRO-3 needs full base weights, but the base is quantized "
            f"(e.g. {quantized[0]}): use ZeRO-2 (recipes/accelerate/deepspeed_zero2.yaml) or DDP for QLoRA"
        )


class SlowTuningCallback(TrainerCallback):
    """Slow tuning as a ``TrainerCallback`` (hooks, resume and metrics: the module docstring; rules: :mod:`.rules`).

    Args:
        args: :class:`SLowEDArguments` (or ``SafeDistillConfig``); ``slow_tuning_*`` fields are read.

    Use: ``trainer.add_callback(SlowTuningCallback(config))``; the anchor is taken in ``on_train_begin``.
    """

    def __init__(self, args: SLowEDArguments):
        self.args = args
        self.rule = args.slow_tuning_rule
        self.units: list[_Unit] = []
        self.metrics: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []  # per check: step, epoch, budget, drift_mean, drift_max, ...
        self.projections_total = 0
        self.epoch_records: list[dict[str, float]] = []
        self._epoch_running = {"epoch": 0, "drift_max_steps": 0.0, "projections": 0}
        self._projections_since_log = 0
        self._pending_dir: str | None = None
        self._last_check_step = -1
        self.saved_to: str | None = None  # the checkpoint folder the anchor was last written to
        self._model: torch.nn.Module | None = None  # set in on_train_begin: gathered around checks under ZeRO-3

    # ---- set-up -------------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.rule != "off"

    def budget(self, epoch: int) -> float:
        """β_e = slow_tuning_budget · slow_tuning_budget_growth**e."""
        return epoch_budget(self.args.slow_tuning_budget, self.args.slow_tuning_budget_growth, epoch)

    @torch.no_grad()
    def anchor(self, model: torch.nn.Module, saved: dict[str, Any] | None = None) -> None:
        """Take the anchor from ``model`` now (``saved`` is None), or rebuild it from a checkpoint's files."""
        lora_units, full = discover_units(model, self.args.slow_tuning_include_1d)
        tensors = saved["tensors"] if saved else {}
        records = {u["name"]: u for u in saved["state"]["units"]} if saved else {}
        if saved:
            names = {u.name for u in lora_units} | {canonical_name(n) for n, _ in full}
            if names != set(records):
                diff = sorted(names ^ set(records))[:5]
                raise ValueError(f"slow tuning anchor does not match the model's trainable layers, e.g. {diff}")
        units: list[_Unit] = []
        for u in lora_units:
            if saved:
                if f"b0::{u.name}" in tensors:
                    u.a0, u.b0 = tensors[f"a0::{u.name}"].to(u.A.device), tensors[f"b0::{u.name}"].to(u.B.device)
            elif bool(u.B.detach().any()) and bool(u.A.detach().any()):
                u.a0, u.b0 = u.A.detach().clone(), u.B.detach().clone()
            u.prepare()
            units.append(u)
        for pname, p in full:
            name = canonical_name(pname)
            w0 = tensors[f"w0::{name}"].to(device=p.device, dtype=p.dtype) if saved else p.detach().clone()
            owner_name, _, attr = pname.rpartition(".")
            units.append(_FullUnit(name=name, w0_norm=0.0, owner=model.get_submodule(owner_name), attr=attr, w0=w0))
        needs_w0 = not saved or self.rule == "direction"
        reference = (
            _Reference(self.args.slow_tuning_reference)
            if uses_reference(self.rule, self.args) and needs_w0
            else None
        )
        quantized = any(isinstance(u, _LoraUnit) and u.quantized for u in units)
        aligned = aligned_source(model, self.args.aligned_weights) if reference is not None and quantized else None
        n_matched = 0
        for u in units:
            if saved:
                rec = records[u.name]
                u.w0_norm, u.unit_norm, u.status = rec["w0_norm"], rec["unit_norm"], rec["status"]
            if needs_w0:
                w0 = u.effective_w0()
                if not saved:
                    u.w0_norm = float(torch.linalg.vector_norm(w0))
                    u.unit_norm, u.status = u.w0_norm, "constrained"
                if reference is not None:  # D and U from the saved precision, never from an NF4/int8 base
                    w_aligned = aligned_weight(u, w0, aligned)
                    n_matched += attach_reference(u, w_aligned, reference, self.rule, self.args, set_norm=not saved)
                    del w_aligned
                del w0
            if isinstance(u, _LoraUnit) and u.direction is not None and u.has_delta0:
                u._c0 = u._inner_with_direction(u.b0, u.a0)
        if reference is not None and n_matched == 0:
            raise ValueError(f"no tensor of the model matched slow_tuning_reference={self.args.slow_tuning_reference}")
        if any(u.w0_norm == 0.0 and u.status == "constrained" for u in units):
            for u in units:
                if u.w0_norm == 0.0 and u.status == "constrained":
                    u.unit_norm, u.status = 1.0, "skip"  # zero-initialised tensors: no relative unit
        self.units = units
        logger.info("slow tuning (%s): %d units, anchor %s", self.rule, len(units), "restored" if saved else "taken")

    # ---- checks -------------------------------------------------------------------------------------------
    def check(self, step: int, epoch: int, correct: bool = True) -> dict[str, Any]:
        """Measure every unit's drift, apply the rule when ``correct``; returns this check's record (:mod:`.rules`)."""
        with full_parameters(self._model, modify=correct) as write_masters:
            record = apply_rule(self.units, self.rule, self.budget(epoch), self.args.slow_tuning_pull, step, epoch, correct)
            if correct and record["projections"]:
                write_masters()
        return record

    def _record(self, record: dict[str, Any], args: Any, state: Any) -> None:
        n = record["projections"]
        self.projections_total += n
        self._projections_since_log += n
        run = self._epoch_running
        if run["epoch"] != record["epoch"]:
            run.update(epoch=record["epoch"], drift_max_steps=0.0, projections=0)
        run["drift_max_steps"] = max(run["drift_max_steps"], record["drift_max_before"])
        run["projections"] += n
        record["projections_total"] = self.projections_total
        summary = {k: v for k, v in record.items() if k not in ("layers", "projected")}
        self.history.append(summary)
        self.metrics.update(
            {
                f"{PREFIX}drift_mean": record["drift_mean"],
                f"{PREFIX}drift_max": record["drift_max"],
                f"{PREFIX}drift_max_before": record["drift_max_before"],
                f"{PREFIX}budget": record["budget"],
                f"{PREFIX}projections_step": float(n),
                f"{PREFIX}projections": float(self._projections_since_log),
                f"{PREFIX}projections_total": float(self.projections_total),
            }
        )
        if self.args.slow_tuning_unit == "reference" or self.rule == "direction":
            self.metrics[f"{PREFIX}rel_drift_mean"] = record["rel_drift_mean"]
            self.metrics[f"{PREFIX}rel_drift_max"] = record["rel_drift_max"]
        if self.args.slow_tuning_log_layers and getattr(state, "is_world_process_zero", True) and args.output_dir:
            drift_log.append_row(args.output_dir, {**summary, "layers": record["layers"], "projected": record["projected"]})

    @staticmethod
    def step_epoch(state: Any) -> int:
        """Index of the epoch an optimizer step belongs to, from ``state.epoch`` after the step (e.g. 1.0 -> 0)."""
        return max(0, math.ceil((state.epoch or 0.0) - 1e-9) - 1)

    # ---- hooks --------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.enabled:
            return
        if model is None:
            raise ValueError("SlowTuningCallback needs the model in on_train_begin")
        directory = self._pending_dir
        if directory is None and state.global_step > 0:
            candidate = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if has_state(candidate):
                directory = candidate
            else:
                raise RuntimeError(
                    f"resuming at step {state.global_step} but no slow-tuning anchor was loaded: call "
                    "SlowTuningCallback.load_anchor(checkpoint_dir) from the trainer's _load_from_checkpoint"
                )
        self._pending_dir = None
        main = getattr(state, "is_world_process_zero", True)
        self._model = model
        with full_parameters(model, modify=False, trainable_only=False):
            if directory is None:
                self._reset()
                self.anchor(model)
                if main and args.output_dir:  # a fresh run: a new drift log, never appended to a previous run's
                    drift_log.start(args.output_dir)
            else:
                self._restore(directory, model, state.global_step, args, main)

    def on_step_end(self, args, state, control, **kwargs):
        if not self.enabled or not self.units:
            return
        k = self.args.slow_tuning_check_every
        if state.global_step % k == 0:
            self._record(self.check(state.global_step, self.step_epoch(state)), args, state)
            self._last_check_step = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        if not self.enabled or not self.units:
            return
        epoch = self.step_epoch(state)
        if self._last_check_step != state.global_step:
            self._record(self.check(state.global_step, epoch), args, state)
            self._last_check_step = state.global_step
        last = self.history[-1] if self.history else {"drift_mean": 0.0, "drift_max": 0.0}
        run = self._epoch_running
        rec = {
            "epoch": float(epoch),
            "drift_mean": last["drift_mean"],
            "drift_max": last["drift_max"],
            "drift_max_steps": run["drift_max_steps"] if run["epoch"] == epoch else last["drift_max"],
            "projections": float(run["projections"] if run["epoch"] == epoch else 0),
        }
        self.epoch_records.append(rec)
        self.metrics.update({f"{PREFIX}epoch_{k}": v for k, v in rec.items() if k != "epoch"})
        self.metrics[f"{PREFIX}epoch_index"] = float(epoch)

    def on_save(self, args, state, control, **kwargs):
        if not self.enabled or not self.units or not getattr(args, "should_save", True):
            return
        directory = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(directory) and self.saved_to != directory:  # SafeDistillTrainer wrote it before its own files
            self.save_anchor(directory)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Fallback when the trainer did not merge pop_metrics() into logs itself.
        if not self.metrics or logs is None:
            return
        metrics = self.pop_metrics()
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)

    def pop_metrics(self) -> dict[str, float]:
        """The ``slow_tuning/*`` metrics since the last call (for ``Trainer.log``); resets the per-log counters."""
        metrics, self.metrics = self.metrics, {}
        self._projections_since_log = 0
        return metrics

    # ---- persistence --------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.metrics, self.history, self.epoch_records = {}, [], []
        self.projections_total, self._projections_since_log, self._last_check_step = 0, 0, -1
        self._epoch_running = {"epoch": 0, "drift_max_steps": 0.0, "projections": 0}

    def save_anchor(self, directory: str) -> None:
        """Write the anchor tensors and the callback's state into ``directory`` (a checkpoint folder)."""
        tensors: dict[str, torch.Tensor] = {}
        for u in self.units:
            if isinstance(u, _FullUnit):
                tensors[f"w0::{u.name}"] = u.w0.detach().cpu().contiguous()
            elif isinstance(u, _LoraUnit) and u.has_delta0:
                tensors[f"a0::{u.name}"] = u.a0.detach().cpu().contiguous()
                tensors[f"b0::{u.name}"] = u.b0.detach().cpu().contiguous()
        state = {
            "rule": self.rule,
            "units": [
                {"name": u.name, "w0_norm": u.w0_norm, "unit_norm": u.unit_norm, "status": u.status}
                for u in self.units
            ],
            "projections_total": self.projections_total,
            "projections_since_log": self._projections_since_log,
            "last_check_step": self._last_check_step,
            "epoch_running": self._epoch_running,
            "epoch_records": self.epoch_records,
            "history": self.history,
            "metrics": self.metrics,
        }
        write_checkpoint(directory, tensors, state)
        self.saved_to = directory

    def load_anchor(self, checkpoint_dir: str) -> bool:
        """Register ``checkpoint_dir``'s anchor for the coming ``on_train_begin`` (call it on resume).

        Returns False when slow tuning is off; raises ``FileNotFoundError`` when the checkpoint has no anchor.
        """
        if not self.enabled:
            return False
        if not has_state(checkpoint_dir):
            raise FileNotFoundError(
                f"{checkpoint_dir} has no {STATE_FILE}: it was not trained with slow tuning, so the anchor W0 "
                "(the weights at the start of training) is unknown"
            )
        self._pending_dir = str(checkpoint_dir)
        return True

    def _restore(self, directory: str, model: torch.nn.Module, step: int, args: Any, main: bool = True) -> None:
        state, tensors = read_checkpoint(directory)
        if state["rule"] != self.rule:
            logger.warning("slow tuning: checkpoint rule %s, now %s", state["rule"], self.rule)
        self.anchor(model, saved={"state": state, "tensors": tensors})
        self.projections_total = state["projections_total"]
        self._projections_since_log = state["projections_since_log"]
        self._last_check_step = state["last_check_step"]
        self._epoch_running = state["epoch_running"]
        self.epoch_records = state["epoch_records"]
        self.history = state["history"]
        self.metrics = state["metrics"]
        if main and args.output_dir:  # continue the checkpoint's run: its rows up to the step, none past it
            drift_log.resume(args.output_dir, directory, step)
