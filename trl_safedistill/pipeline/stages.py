"""Stages cached in a run folder: a finished stage is skipped, a killed one is rerun (and resumes itself).

The run folder holds ``state.json``::

    {"stages": {"<name>": {"status": "running" | "done" | "failed", "fingerprint": "<sha256>",
                           "seconds": 12.3, "result": {...}, "finished": "<UTC time>"}}}

A stage is skipped when its entry is ``done`` with the same fingerprint (a hash of its settings and of
the fingerprints and finish times of the stages it depends on, so a rerun upstream reruns what follows). Otherwise it runs: a ``running`` entry (a killed run) runs
again without wiping its folder, so training stages resume from their last checkpoint; a fingerprint
change or ``force`` wipes the stage folder first. ``state.json`` is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .progress import Progress


def fingerprint(*parts: Any) -> str:
    """A stable sha256 of JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.part-{os.getpid()}")
    partial.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    partial.replace(path)


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
        # A dependency that ran again (new finish time) makes this stage run again too
        fp = fingerprint(settings, [(self.fingerprint_of(d), self.entry(d).get("finished")) for d in depends])
        entry = self.entry(name)
        directory = self.stage_dir(name)
        if entry.get("status") == "done" and entry.get("fingerprint") == fp and not self._forced(name):
            self.progress.stage_skip(name)
            self.skipped.append(name)
            return entry.get("result")
        fresh = self._forced(name) or (entry and entry.get("fingerprint") != fp) or entry.get("status") == "failed"
        note = ""
        if entry.get("status") == "running" and entry.get("fingerprint") == fp and not self._forced(name):
            note = "resuming an interrupted run"
        elif fresh and directory.exists():
            shutil.rmtree(directory)
            note = "settings changed, rerun from scratch" if not self._forced(name) else "forced"
        directory.mkdir(parents=True, exist_ok=True)
        self.state["stages"][name] = {"status": "running", "fingerprint": fp, "started": _now()}
        self._save()
        self.progress.stage_start(name, note)
        t0 = time.monotonic()
        try:
            result = fn(directory)
        except StageError:
            self.state["stages"][name]["status"] = "failed"
            self._save()
            raise
        seconds = time.monotonic() - t0
        self.state["stages"][name] = {
            "status": "done", "fingerprint": fp, "seconds": round(seconds, 2), "result": result, "finished": _now()
        }
        self._save()
        self.progress.stage_end(name, seconds)
        self.ran.append(name)
        return result


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
