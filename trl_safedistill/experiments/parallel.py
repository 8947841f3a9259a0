"""Stage 4 in worker processes: each worker evaluates one model at a time with its share of the CPU threads.

Greedy decoding and the short scoring forwards of the evaluation use two threads poorly on a CPU (small matrix
products): measured on the 2-core reference machine, two single-thread workers evaluating two models at once got
through 1.43x the work of one two-thread process (48 greedy generations + 12 multiple-choice items each). Training
gains little from the same split (1.16x, memory-bound), so it stays in the main process with every thread.

``RunSize.eval_workers`` sets the number of workers (``1``: evaluate in the main process, one model after the other);
on a GPU the evaluation always runs in the main process. A worker is a fresh ``spawn`` process: it loads the tokenizer
and the model from disk, so nothing but the :class:`EvalJob` crosses the process boundary, and the metrics it returns
are those of the same evaluation run in the main process (tested).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Light imports only: a spawned worker imports this module to run _init_worker, which must quiet the console before
# transformers (and with it PEFT and bitsandbytes, which warns at import) is first imported
from .console import is_quiet
from .sizes import RunSize

if TYPE_CHECKING:
    from .stage_progress import Progress
    from .stages import PendingStage


@dataclass(frozen=True)
class EvalJob:
    """Everything one evaluation stage needs, as plain picklable values.

    ``final`` is the student's saved adapter (or full model) folder, ``None`` for the aligned start, whose safety
    numbers (``metrics``) come from the align gate and are kept as they are. ``curve_step``: also measure the
    student's curve point of that (last) training step (:func:`curve_point`).
    """

    tokenizer: str
    start_model: str
    final: str | None
    fmt: str
    size: RunSize
    data_dir: str
    ood: dict[str, Any]
    advbench: str  # the suite's held-out AdvBench file, whose first prompts the curves use
    metrics: dict[str, Any] = field(default_factory=dict)
    curve_step: int | None = None


def evaluate_job(job: EvalJob, directory: Path) -> dict[str, Any]:
    """One model's stage-4 result ``{"metrics": {...}}`` (safety for students, IND and OOD accuracy, with CIs), plus
    ``"curve_point"`` when the job asks for it."""
    from ..models import load_tokenizer
    from .eval_stage import reasoning_metrics, rename, safety_metrics
    from .training import load_model, load_student

    tokenizer = load_tokenizer(job.tokenizer)
    if job.final is None:
        model = load_model(job.start_model, job.size)
        metrics = dict(job.metrics)
    else:
        model = load_student(job.start_model, Path(job.final), job.size)
        metrics = rename(safety_metrics(model, tokenizer, job.size, directory))
    ind_flags: list[float] = []
    metrics.update(rename(reasoning_metrics(model, tokenizer, job.fmt, job.size, Path(job.data_dir), job.ood, directory,
                                            ind_flags)))
    result: dict[str, Any] = {"metrics": metrics}
    if job.curve_step is not None:
        result["curve_point"] = curve_point(model, tokenizer, job, directory, ind_flags)
    return result


def curve_point(model, tokenizer, job: EvalJob, directory: Path, ind_flags: list[float]) -> dict[str, Any]:
    """A student's curve point at its last step, taken from its final evaluation instead of a separate probe.

    It is what :class:`~.probes.Prober` measures, on the same prompts, items and records: refusal of the first
    ``curve_n_harmful`` held-out AdvBench prompts (read from the evaluation's sample log, which scores those prompts
    among its ``n_advbench``), IND MC accuracy of the first ``curve_n_ind`` items (the evaluation's first results),
    and the held-out rationale loss. What the evaluation did not cover is probed directly. On the committed default
    run, the last-step probe and the final evaluation gave the same responses to all 8 x 16 curve prompts.
    """
    from .probes import Prober

    prober = Prober.for_run(tokenizer, job.size, Path(job.data_dir), job.advbench)
    judged: dict[str, bool] = {}
    log = directory / "samples_safety.jsonl"
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("task") == "safedistill_advbench":
                judged[row["prompt"]] = bool(row["safety_ratio"])
    refusal = None
    if all(prompt in judged for prompt in prober.harmful):
        refusal = sum(judged[prompt] for prompt in prober.harmful) / max(len(prober.harmful), 1)
    flags = ind_flags[: len(prober.mc_docs)] if len(ind_flags) >= len(prober.mc_docs) else None
    return {"step": job.curve_step, **prober(model, directory / "samples_curve.jsonl", refusal, flags)}


def worker_threads(workers: int) -> int:
    """Torch threads per worker: the machine's cores shared out evenly (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _init_worker(threads: int, quiet: bool) -> None:
    """A spawned worker's set-up: its share of the threads, and the parent's console policy (the environment switches
    arrive with the inherited environment; logger levels and warnings filters are per process)."""
    if quiet:
        from .console import quiet_console

        quiet_console()
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _timed(job: EvalJob, directory: Path) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    result = evaluate_job(job, directory)
    return result, time.monotonic() - t0


def run_inline(pending: list[PendingStage], progress: Progress) -> Iterator[tuple[str, Any, float]]:
    """Evaluate ``pending`` stages one after the other in this process."""
    for stage in pending:
        progress.stage_start(stage.name, stage.note)
        result, seconds = _timed(stage.payload, stage.directory)
        yield stage.name, result, seconds


def run_in_workers(pending: list[PendingStage], progress: Progress, workers: int) -> Iterator[tuple[str, Any, float]]:
    """Evaluate ``pending`` stages in ``workers`` spawned processes, at most ``workers`` at a time, yielding each as it ends."""
    queue = list(pending)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(worker_threads(workers), is_quiet())) as pool:
        running: dict[Any, PendingStage] = {}

        def submit() -> None:
            stage = queue.pop(0)
            progress.stage_start(stage.name, " - ".join(filter(None, [stage.note, f"{workers} workers"])))
            running[pool.submit(_timed, stage.payload, stage.directory)] = stage

        while queue and len(running) < workers:
            submit()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                stage = running.pop(future)
                result, seconds = future.result()
                yield stage.name, result, seconds
                if queue:
                    submit()
