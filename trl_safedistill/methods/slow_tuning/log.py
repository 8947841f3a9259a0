"""Slow tuning's drift log (SLowED, arXiv 2508.09666): ``{output_dir}/slow_tuning_drift.jsonl``, one run per file.

One JSON line per check (with ``slow_tuning_log_layers``, main process only): the check's summary (``step``,
``epoch``, ``budget``, ``drift_mean``, ``drift_max``, ``drift_max_before``, ``rel_drift_*``, ``projections``,
``projections_total``) plus ``layers`` (unit name -> [drift before, drift after the correction], drift
``d = ||Δ||_F / U``) and ``projected`` (the corrected units).

**Per run, never mixed.** The file always holds one run, its steps strictly increasing:

* a fresh run (training not resumed from a checkpoint) starts a new log: :func:`start` removes the log a
  previous run left in the same ``output_dir`` (the new run's anchor differs, so its drifts are not comparable);
* a resumed run continues its log: :func:`resume` keeps the rows of the run that wrote the checkpoint (the log
  beside ``checkpoint-N``, usually ``output_dir``'s own) up to the checkpoint's step and drops those the
  interrupted run wrote past it, so every step appears once. A log written before this rule, with several runs
  appended, keeps only its last run (a run starts where the step stops increasing).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ...atomic import atomic_write

DRIFT_LOG_FILE = "slow_tuning_drift.jsonl"


def start(output_dir: str) -> None:
    """A fresh run begins: remove the drift log a previous run left in ``output_dir``."""
    path = os.path.join(output_dir, DRIFT_LOG_FILE)
    if os.path.isfile(path):
        os.remove(path)


def append_row(output_dir: str, row: dict[str, Any]) -> None:
    """Append one check's row to the drift log of ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, DRIFT_LOG_FILE), "a") as fh:
        fh.write(json.dumps(row) + "\n")


def last_run(lines: list[str]) -> list[str]:
    """The lines of the last run in ``lines``: from the last row whose step does not exceed the one before it."""
    begin, previous = 0, None
    for index, line in enumerate(lines):
        step = json.loads(line)["step"]
        if previous is not None and step <= previous:
            begin = index
        previous = step
    return lines[begin:]


def resume(output_dir: str, checkpoint_dir: str, step: int) -> None:
    """On resume from ``checkpoint_dir`` at ``step``: ``output_dir``'s log becomes the checkpoint's run up to ``step``.

    The rows come from the log beside the checkpoint (its last run, rows ``<= step``); written atomically. When
    that log does not exist (the run did not log layers) any log in ``output_dir`` is emptied rather than mixed.
    """
    source = os.path.join(os.path.dirname(os.path.abspath(checkpoint_dir)), DRIFT_LOG_FILE)
    target = os.path.join(output_dir, DRIFT_LOG_FILE)
    kept: list[str] = []
    if os.path.isfile(source):
        with open(source) as fh:
            kept = [ln for ln in last_run([ln for ln in fh if ln.strip()]) if json.loads(ln)["step"] <= step]
    if kept or os.path.isfile(target):
        atomic_write(target, lambda handle: handle.writelines(kept))
