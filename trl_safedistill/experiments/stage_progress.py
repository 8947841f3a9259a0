"""The demo's progress display: which stage runs, its step, and ETAs for the stage and the whole run.

Lines go to stderr (``[3/19 distil:standard] step 8/24 33% | 6.1 s/step | stage ETA 1m38s | run ETA ~14m``).
The run ETA adds, for every stage still to run, the mean duration of finished stages of the same kind
(``distil``, ``eval``...) measured in this run or recorded by a previous, interrupted one, divided by how many
stages of that kind run at once; it is ``?`` until one stage of each remaining kind has finished.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable

from transformers import TrainerCallback

#: every line the demo's console shows while it runs (all of them, by default: :mod:`.console`): a stage event
#: (``start``, a step, ``done in``, ``skipped``) or the align gate's verdict
PROGRESS_LINE = re.compile(r"\[\d+/\d+ [^\]\s]+\] (start( - .*)? \| run ETA ~\S+|\w+ \d+/\d+ \d+% \| .* \| stage ETA \S+ \| run ETA ~\S+"
                           r"|done in \S+|skipped \(.*\))|align gate (passed|FAILED): .*")


def format_seconds(seconds: float | None) -> str:
    """``95`` -> ``1m35s``; ``None`` -> ``?``."""
    if seconds is None:
        return "?"
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Tracks the stage list and prints progress lines."""

    def __init__(self, stages: list[str], durations: dict[str, float] | None = None, stream=None, quiet: bool = False):
        self.stages = list(stages)
        self.durations: dict[str, float] = dict(durations or {})
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.current: str | None = None
        self.started = time.monotonic()
        self.parallel: dict[str, int] = {}  # stage kind -> how many of its stages run at once

    @staticmethod
    def kind(stage: str) -> str:
        return stage.split(":", 1)[0]

    def index(self, stage: str) -> int:
        return self.stages.index(stage) + 1 if stage in self.stages else 0

    def run_eta(self, elapsed_in_current: float = 0.0, current_eta: float | None = None) -> float | None:
        """Seconds left in the run, from mean durations per stage kind (``None`` when unknown)."""
        means: dict[str, list[float]] = {}
        for name, seconds in self.durations.items():
            means.setdefault(self.kind(name), []).append(seconds)
        total = current_eta or 0.0
        position = self.stages.index(self.current) + 1 if self.current in self.stages else 0
        for name in self.stages[position:]:
            if name in self.durations:
                continue
            values = means.get(self.kind(name))
            if not values:
                return None
            total += sum(values) / len(values) / self.parallel.get(self.kind(name), 1)
        return total

    def print(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def stage_start(self, stage: str, note: str = "") -> None:
        self.current = stage
        self.stage_t0 = time.monotonic()
        eta = self.run_eta()
        self.print(f"[{self.index(stage)}/{len(self.stages)} {stage}] start{(' - ' + note) if note else ''}"
                   f" | run ETA ~{format_seconds(eta)}")

    def stage_skip(self, stage: str, reason: str = "done, cached") -> None:
        self.print(f"[{self.index(stage)}/{len(self.stages)} {stage}] skipped ({reason})")

    def stage_end(self, stage: str, seconds: float) -> None:
        self.durations[stage] = seconds
        self.print(f"[{self.index(stage)}/{len(self.stages)} {stage}] done in {format_seconds(seconds)}")

    def step(self, step: int, total: int, seconds_per_step: float | None, what: str = "step") -> None:
        stage = self.current or "?"
        left = (total - step) * seconds_per_step if seconds_per_step else None
        eta = self.run_eta(current_eta=left)
        rate = f"{seconds_per_step:.1f} s/{what}" if seconds_per_step else f"? s/{what}"
        self.print(
            f"[{self.index(stage)}/{len(self.stages)} {stage}] {what} {step}/{total} {100 * step // max(total, 1)}% | {rate}"
            f" | stage ETA {format_seconds(left)} | run ETA ~{format_seconds(eta)}"
        )


class StageProgressCallback(TrainerCallback):
    """Reports every optimizer step of a training stage to :class:`Progress` (resumed steps included)."""

    def __init__(self, progress: Progress, extra: Callable[[], float] | None = None):
        self.progress = progress
        self.t0: float | None = None
        self.start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = time.monotonic()
        self.start_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        done = state.global_step - self.start_step
        rate = (time.monotonic() - self.t0) / done if done and self.t0 is not None else None
        self.progress.step(state.global_step, state.max_steps, rate)
