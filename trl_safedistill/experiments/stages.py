"""Stages cached in a run folder: a finished stage is skipped, a killed one is rerun (and resumes itself).

The run folder holds ``state.json``::

    {"stages": {"<name>": {"status": "running" | "done" | "failed", "fingerprint": "<sha256>",
                           "seconds": 12.3, "result": {...}, "finished": "<UTC time>"}},
     "groups": {"<group>": {"seconds": 95.0, "workers": 2, "stages": ["<name>", ...]}}}

A stage is skipped when its entry is ``done`` with the same fingerprint (a hash of its settings and of
the fingerprints and finish times of the stages it depends on, so a rerun upstream reruns what follows). Otherwise it runs: a ``running`` entry (a killed run) runs
again without wiping its folder, so training stages resume from their last complete checkpoint (one the kill
cut short is skipped: :func:`.training.last_checkpoint`); a fingerprint
change or ``force`` wipes the stage folder first. ``state.json`` is written atomically. Independent stages can run
concurrently as a group (:meth:`StageRunner.run_group`); the group's wall time is recorded beside each stage's own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..atomic import write_json
from .stage_progress import Progress


def fingerprint(*parts: Any) -> str:
    """A stable sha256 of JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class StageError(RuntimeError):
    """A stage failed in a way the user must act on (the message says how); the CLI exits non-zero."""

    exit_code = 3


class StageRunner:
    """Runs named stages in ``run_dir`` with caching, resumption and progress."""

    def __init__(self, run_dir: Path | str, progress: Progress, force: bool | set[str] = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.run_dir / "state.json"
        self.state: dict[str, Any] = (
            json.loads(self.state_path.read_text()) if self.state_path.exists() else {"stages": {}}
        )
        self.progress = progress
        self.force = force
        for name, entry in self.state["stages"].items():
            if entry.get("status") == "done" and entry.get("seconds") is not None:
                self.progress.durations.setdefault(name, float(entry["seconds"]))
        self.ran: list[str] = []
        self._notes: dict[str, str] = {}
        self.skipped: list[str] = []

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name.replace(":", "/")

    def entry(self, name: str) -> dict[str, Any]:
        return self.state["stages"].get(name, {})

    def result(self, name: str) -> Any:
        return self.entry(name).get("result")

    def fingerprint_of(self, name: str) -> str | None:
        return self.entry(name).get("fingerprint")

    def _forced(self, name: str) -> bool:
        return self.force is True or (isinstance(self.force, set) and name in self.force)

    def _save(self) -> None:
        write_json(self.state_path, self.state)

    def run(self, name: str, settings: Any, fn: Callable[[Path], Any], depends: tuple[str, ...] = ()) -> Any:
        """Run stage ``name`` (``fn(stage_dir) -> result``) unless done with the same fingerprint."""
        fp = self._fingerprint(settings, depends)
        if self._cached(name, fp):
            return self.entry(name).get("result")
        directory = self._begin(name, fp)
        self.progress.stage_start(name, self._notes.pop(name, ""))
        t0 = time.monotonic()
        try:
            result = fn(directory)
        except StageError:
            self._fail(name)
            raise
        return self._finish(name, fp, result, time.monotonic() - t0)

    def run_group(self, group: str, stages: Sequence[tuple[str, Any, tuple[str, ...], Any]],
                  execute: Callable[[list[PendingStage]], Iterator[tuple[str, Any, float]]], workers: int) -> dict[str, Any]:
        """Run independent stages ``(name, settings, depends, payload)`` through ``execute``, which may run them at once.

        Caching, resumption and folders work as in :meth:`run`. ``execute`` receives the stages still to run and yields
        ``(name, result, seconds)`` as each finishes (``seconds``: that stage's own duration); it calls
        ``progress.stage_start`` when a stage really starts. The group's wall time is kept in ``state["groups"]`` so a
        run's wall time counts concurrent stages once. Returns ``{name: result}`` for every stage.
        """
        pending: list[PendingStage] = []
        fingerprints: dict[str, str] = {}
        for name, settings, depends, payload in stages:
            fp = self._fingerprint(settings, depends)
            if self._cached(name, fp):
                continue
            fingerprints[name] = fp
            pending.append(PendingStage(name, self._begin(name, fp), payload, self._notes.pop(name, "")))
        if pending:
            t0 = time.monotonic()
            try:
                for name, result, seconds in execute(pending):
                    self._finish(name, fingerprints[name], result, seconds)
            except StageError:
                for stage in pending:
                    if self.entry(stage.name).get("status") == "running":
                        self._fail(stage.name)
                raise
            self.state.setdefault("groups", {})[group] = {
                "seconds": round(time.monotonic() - t0, 2), "workers": workers, "stages": [p.name for p in pending],
            }
            self._save()
        return {name: self.result(name) for name, *_ in stages}

    # ------------------------------------------------------------------------------------------ internals
    def _fingerprint(self, settings: Any, depends: tuple[str, ...]) -> str:
        # A dependency that ran again (new finish time) makes this stage run again too
        return fingerprint(settings, [(self.fingerprint_of(d), self.entry(d).get("finished")) for d in depends])

    def _cached(self, name: str, fp: str) -> bool:
        entry = self.entry(name)
        if entry.get("status") == "done" and entry.get("fingerprint") == fp and not self._forced(name):
            self.progress.stage_skip(name)
            self.skipped.append(name)
            return True
        return False

    def _begin(self, name: str, fp: str) -> Path:
        """Mark ``name`` running; wipe its folder unless it resumes an interrupted run with the same settings."""
        entry = self.entry(name)
        directory = self.stage_dir(name)
        fresh = self._forced(name) or (entry and entry.get("fingerprint") != fp) or entry.get("status") == "failed"
        note = ""
        if entry.get("status") == "running" and entry.get("fingerprint") == fp and not self._forced(name):
            note = "resuming an interrupted run"
        elif fresh and directory.exists():
            shutil.rmtree(directory)
            note = "settings changed, rerun from scratch" if not self._forced(name) else "forced"
        self._notes[name] = note
        directory.mkdir(parents=True, exist_ok=True)
        self.state["stages"][name] = {"status": "running", "fingerprint": fp, "started": _now()}
        self._save()
        return directory

    def _fail(self, name: str) -> None:
        self.state["stages"][name]["status"] = "failed"
        self._save()

    def _finish(self, name: str, fp: str, result: Any, seconds: float) -> Any:
        self.state["stages"][name] = {
            "status": "done", "fingerprint": fp, "seconds": round(seconds, 2), "result": result, "finished": _now()
        }
        self._save()
        self.progress.stage_end(name, seconds)
        self.ran.append(name)
        return result


@dataclass(frozen=True)
class PendingStage:
    """A stage of :meth:`StageRunner.run_group` still to run: its name, its (prepared) folder, what to run."""

    name: str
    directory: Path
    payload: Any
    note: str = ""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
