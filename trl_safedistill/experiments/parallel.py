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

import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
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

    ``final`` is the student's saved adapter (or full model) folder, ``None`` for the aligned start.
    """

    tokenizer: str
    start_model: str
    final: str | None
    fmt: str
    size: RunSize
    data_dir: str
    ood: dict[str, Any]


def evaluate_job(job: EvalJob, directory: Path) -> dict[str, Any]:
    """One model's final evaluation on test data (:mod:`.eval_stage`): ``{"metrics": {...}, "safety": summary,
    "items": path}``; the per-item rows go to ``items.jsonl.gz`` in ``directory``.

    An ``adaptive`` student is loaded with its router (:func:`.training.load_student_router`; a missing one is an
    error): its exact-match items are generated routed and under both forced modes, its safety prompts as every
    other student's (plain chat turns, not routed; :mod:`.eval_stage`)."""
    from ..evaluation.protocol import summarise
    from ..models import load_tokenizer
    from .eval_stage import ITEMS_FILE, reasoning_items, rename, safety_items, write_items
    from .training import load_model, load_student, load_student_router

    tokenizer = load_tokenizer(job.tokenizer)
    router = None
    if job.final is None:
        model = load_model(job.start_model, job.size)
    else:
        model = load_student(job.start_model, Path(job.final), job.size)
        if job.fmt == "adaptive":
            router = load_student_router(job.final, model)
            if router is None:
                raise FileNotFoundError(f"{job.final}: an adaptive student without its router (router/); retrain it")
    safety = safety_items(model, tokenizer, job.size, "test", job.size.n_safety, directory, "samples_safety.jsonl")
    summary, capability = reasoning_items(model, tokenizer, job.fmt, job.size, Path(job.data_dir), job.ood, directory,
                                          router)
    write_items(directory / ITEMS_FILE, safety + capability)
    metrics = rename(summary)
    for key in ("format_valid", "heldout_nll"):
        if key in summary:
            metrics[key] = summary[key]
    return {"metrics": metrics, "safety": summarise(safety), "items": str(directory / ITEMS_FILE)}


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
