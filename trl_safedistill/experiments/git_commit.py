"""Commit finished results as they land (``--commit`` of the evidence run and the equal-effort sweep).

A long experiment writes one small result per unit (a model's evaluation, a sweep point) and commits it at once, so a
run cut short continues from the repository on another machine. Each commit holds the given paths alone
(``git commit --only``): whatever else is staged or edited in the checkout stays as it is.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def commit_paths(paths: list[Path], message: str, tries: int = 5) -> bool:
    """Commit ``paths`` alone (other staged or unstaged changes are left as they are); a busy index (another git
    command holding ``index.lock``) is retried. A commit that still fails is reported, not fatal: the result stays on
    disk and the next ``--commit`` run (or a person) commits it."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=paths[0].parent, capture_output=True, text=True,
                          check=True).stdout.strip()
    names = [str(p) for p in paths]
    for attempt in range(tries):
        added = subprocess.run(["git", "add", "--", *names], cwd=root, capture_output=True, text=True)
        done = added.returncode == 0 and subprocess.run(
            ["git", "commit", "--quiet", "--only", "-m", message, "--", *names], cwd=root, capture_output=True, text=True
        ).returncode == 0
        if done:
            return True
        time.sleep(2 + 3 * attempt)
    print(f"warning: could not commit {names}; on disk, commit by hand", file=sys.stderr, flush=True)
    return False
