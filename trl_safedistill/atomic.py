"""Atomic file writes: a file is either its old complete self or its new complete self, never torn.

Every writer goes to a temporary file in the same folder (``<name>.part-<pid>``), flushes and fsyncs it,
then ``os.replace``-s it over the target, which POSIX makes atomic. A kill at any point leaves at most a
stray ``.part-*`` file beside an intact target.

``mode`` sets the permission bits of the new file at creation (``PRIVATE`` = 0600 for anything that holds
generated responses to harmful prompts); without it the process umask applies as for ``open``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

#: Permission bits for files holding generated responses to harmful prompts: owner read/write only.
PRIVATE = 0o600


def atomic_write(path: str | Path, write: Callable[[IO[str]], Any], mode: int | None = None) -> Path:
    """Call ``write(handle)`` on a temporary file, then rename it to ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.part-{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(partial, mode)  # O_CREAT's mode is masked by the umask; PRIVATE must hold exactly
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str, mode: int | None = None) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(text), mode)


def write_json(path: str | Path, data: Any, mode: int | None = None) -> Path:
    """Write ``data`` as indented JSON atomically (non-JSON values through ``str``)."""
    return atomic_write(path, lambda handle: handle.write(json.dumps(data, indent=2, default=str)), mode)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]], mode: int | None = None) -> int:
    """Write one JSON object per line atomically; returns the number of rows."""
    count = 0

    def write(handle: IO[str]) -> None:
        nonlocal count
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1

    atomic_write(path, write, mode)
    return count
