"""Crash-safe, resumable output for teacher generation: records and a ledger of attempts.

A run writes two append-only JSONL files, one line per ``write`` call, flushed at once:

* ``OUT`` (e.g. ``rationales.jsonl``): the kept records in the project's record layout (loadable
  with :func:`trl_safedistill.records.load_jsonl`), each with two extra keys, ``question_id`` and
  ``sample``;
* ``OUT.ledger.jsonl``: one line per finished attempt ``{"question_id", "sample", "task", "status"}``
  with status ``kept``, ``wrong``, ``unparseable`` or ``failed``. Generated text never goes here.

An attempt is keyed by ``(question id, sample index)``. The record line is written before its ledger
line; on resume (:meth:`Ledger.open`) a torn last line of either file (a kill during a write) is cut
off, and a record whose ledger line is missing (a kill between the two writes) is entered in the
ledger as ``kept``. So a run killed at any point and started again loses no record and writes none
twice. Failed attempts (requests that failed after all retries) are tried again on resume.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

STATUSES = ("kept", "wrong", "unparseable", "failed")
Key = tuple[str, int]


def _repair(path: Path) -> None:
    """Cut a torn last line (no trailing newline) off an append-only JSONL file."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 1))
        if handle.read(1) == b"\n":
            return
        position = size
        chunk = 4096
        while position > 0:
            start = max(0, position - chunk)
            handle.seek(start)
            data = handle.read(position - start)
            newline = data.rfind(b"\n")
            if newline >= 0:
                handle.truncate(start + newline + 1)
                return
            position = start
        handle.truncate(0)


def _lines(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError:
                    raise ValueError(f"{path}:{number}: not valid JSON; the file is not a teacher output") from None


class Ledger:
    """The state of one output file: which attempts are finished, and appending new ones."""

    def __init__(self, out_path: str | Path):
        self.out_path = Path(out_path)
        self.ledger_path = self.out_path.with_name(self.out_path.name + ".ledger.jsonl")
        self.status: dict[Key, str] = {}
        self.task: dict[Key, str] = {}
        self._out: IO[str] | None = None
        self._ledger: IO[str] | None = None

    @classmethod
    def open(cls, out_path: str | Path, *, resume: bool = True) -> Ledger:
        """Open for appending (resume) or start afresh (``resume=False`` truncates both files)."""
        ledger = cls(out_path)
        ledger.out_path.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            for path in (ledger.out_path, ledger.ledger_path):
                path.unlink(missing_ok=True)
        _repair(ledger.out_path)
        _repair(ledger.ledger_path)
        for number, row in _lines(ledger.ledger_path):
            try:
                key = (str(row["question_id"]), int(row["sample"]))
                status = str(row["status"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{ledger.ledger_path}:{number}: field 'question_id'/'sample'/'status' missing") from None
            ledger.status[key] = status
            ledger.task[key] = str(row.get("task", "default"))
        orphans = []
        for number, row in _lines(ledger.out_path):
            if "question_id" not in row or "sample" not in row:
                raise ValueError(f"{ledger.out_path}:{number}: field 'question_id'/'sample' missing; not a teach output")
            key = (str(row["question_id"]), int(row["sample"]))
            if ledger.status.get(key) != "kept":
                orphans.append((key, str(row.get("task", "default"))))
        ledger._out = ledger.out_path.open("a", encoding="utf-8")
        ledger._ledger = ledger.ledger_path.open("a", encoding="utf-8")
        for key, task in orphans:
            ledger._append_ledger(key, task, "kept")
        return ledger

    def _append_ledger(self, key: Key, task: str, status: str) -> None:
        assert self._ledger is not None
        self._ledger.write(json.dumps({"question_id": key[0], "sample": key[1], "task": task, "status": status}) + "\n")
        self._ledger.flush()
        self.status[key], self.task[key] = status, task

    def done(self, key: Key, *, retry_failed: bool = True) -> bool:
        """Whether this attempt needs no (new) request."""
        status = self.status.get(key)
        return status is not None and not (retry_failed and status == "failed")

    def record(self, key: Key, task: str, status: str, record: dict[str, Any] | None = None) -> None:
        """Finish one attempt: the record line first (when kept), then the ledger line; both flushed."""
        if status not in STATUSES:
            raise ValueError(f"unknown status '{status}'")
        if record is not None:
            assert self._out is not None
            self._out.write(json.dumps({**record, "question_id": key[0], "sample": key[1]}, ensure_ascii=False) + "\n")
            self._out.flush()
        self._append_ledger(key, task, status)

    def summary(self) -> dict[str, Counter]:
        """Per task, the count of attempts by final status."""
        table: dict[str, Counter] = {}
        for key, status in self.status.items():
            table.setdefault(self.task.get(key, "default"), Counter())[status] += 1
        return table

    def close(self) -> None:
        for handle in (self._out, self._ledger):
            if handle is not None:
                handle.close()
        self._out = self._ledger = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
