"""The ``bbh-cot`` source: real teacher rationales shipped with the package.

code-davinci-002 chain-of-thought for every item of 14 BIG-Bench Hard tasks (3,261 rows; Suzgun et
al. 2022, MIT license, copy and notice in ``trl_safedistill/resources/bbh_cot/``). Rows whose teacher
answer matches the gold target (``correct``) are the training rationales, as CasCoD and SLowED
filter them.

Held-out rule (in-domain evaluation, never trained on): an item is held out when
``int(sha256(id)[:8], 16) / 2**32 < heldout_fraction`` (default 0.2). The rule depends on the id
only, so it is stable across versions, machines and the ``correct`` filter: each task keeps about
the same held-out share, and the held-out items are evaluated against the gold ``target``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..records import RationaleRecord, RecordError

DEFAULT_HELDOUT_FRACTION = 0.2
SPLITS = ("train", "heldout", "all")


def data_dir() -> Path:
    """The folder of the shipped ``<task>.jsonl.gz`` files."""
    return Path(str(resources.files("trl_safedistill") / "resources" / "bbh_cot"))


def task_names() -> list[str]:
    return sorted(path.name[: -len(".jsonl.gz")] for path in data_dir().glob("*.jsonl.gz"))


def is_heldout(item_id: str, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION) -> bool:
    """The fixed held-out rule: the first 32 bits of sha256(id), as a fraction, below ``heldout_fraction``."""
    return int(hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:8], 16) / 2**32 < heldout_fraction


def raw_rows(tasks: list[str] | None = None) -> list[dict[str, Any]]:
    """Every shipped row (with ``target`` and ``correct``), in file order."""
    rows = []
    for task in tasks or task_names():
        path = data_dir() / f"{task}.jsonl.gz"
        if not path.exists():
            raise RecordError(str(path), None, "task", f"unknown bbh-cot task '{task}'; known: {task_names()}")
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            rows.extend(json.loads(line) for line in handle if line.strip())
    return rows


def split_rows(split: str, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION, tasks: list[str] | None = None) -> list[dict]:
    """Raw rows of one split: ``train`` (not held out), ``heldout`` or ``all``."""
    if split not in SPLITS:
        raise ValueError(f"bbh-cot split must be one of {SPLITS}, got '{split}'")
    rows = raw_rows(tasks)
    if split == "all":
        return rows
    return [row for row in rows if is_heldout(row["id"], heldout_fraction) == (split == "heldout")]


def load_bbh_cot(
    split: str = "train",
    *,
    correct_only: bool = True,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    tasks: list[str] | None = None,
) -> list[RationaleRecord]:
    """Rationale records of one split; by default only rows whose teacher answer is correct."""
    records = []
    for row in split_rows(split, heldout_fraction, tasks):
        if correct_only and not row["correct"]:
            continue
        if row["answer"] is None or not row["rationale"].strip():
            continue
        records.append(
            RationaleRecord(
                id=row["id"],
                question=row["question"],
                rationale=row["rationale"],
                answer=row["answer"],
                task=row["task"],
                description=row["description"],
            )
        )
    return records
