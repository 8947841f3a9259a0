"""Import existing teacher-output collections as rationale records.

Recognised layouts (one file each):

* JSONL (or ``.jsonl.gz``), one object per line, either with ``rationale`` and ``answer`` columns or
  with one chain-of-thought string (``prediction``, ``output``, ``completion``, ``response``,
  ``cot_output`` or ``cot``) that ends with an answer phrase (``Therefore, the answer is`` ...);
* JSON with a top-level list of such objects, or an object whose ``outputs`` or ``examples`` key holds
  the list, e.g. BIG-Bench-Hard's ``{"outputs": [{"input", "target", "prediction"}, ...]}``.

Rows are validated by :func:`trl_safedistill.records.validate_rows`; a bad row raises a
:class:`~trl_safedistill.records.RecordError` naming the file, the line the row starts on, and the
field (or, with ``skip_invalid=True``, is counted in the :class:`~trl_safedistill.records.LoadReport`).
When a row has a chain-of-thought string and a gold column (``target``, ``gold``, ``label`` or
``answer``), only chains whose answer matches the gold are kept (CasCoD's filter), unless
``require_correct=False``; dropped rows are counted under ``wrong answer``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..answers import answers_match
from ..records import (
    COMMON_COLUMNS,
    DEFAULT_ANSWER_PHRASES,
    LoadReport,
    RationaleRecord,
    RecordError,
    read_jsonl_rows,
    validate_rows,
)

LIST_KEYS = ("outputs", "examples")
GOLD_COLUMNS = ("target", "gold", "label", "answer")


def _element_lines(text: str, start: int) -> list[int] | None:
    """Line numbers where the elements of the JSON array opening at ``text[start] == '['`` begin."""
    decoder = json.JSONDecoder()
    lines, position = [], start + 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text):
            return None
        if text[position] == "]":
            return lines
        lines.append(text.count("\n", 0, position) + 1)
        try:
            _, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return None


def json_rows(path: Path) -> list[tuple[int | None, Any]]:
    """``(line, row)`` pairs of a JSON teacher-output file (top-level list or ``outputs``/``examples``)."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError(str(path), error.lineno, None, f"not valid JSON ({error.msg})") from None
    start: int | None = None
    if isinstance(data, list):
        start = text.index("[")
        items = data
    elif isinstance(data, Mapping):
        key = next((k for k in LIST_KEYS if isinstance(data.get(k), list)), None)
        if key is None:
            raise RecordError(str(path), 1, None, f"expected a top-level list or one of the keys {list(LIST_KEYS)} holding a list")
        items = data[key]
        marker = text.find(f'"{key}"')
        start = text.find("[", marker) if marker >= 0 else None
    else:
        raise RecordError(str(path), 1, None, f"expected a list or an object, got {type(data).__name__}")
    lines = _element_lines(text, start) if start is not None and start >= 0 else None
    if lines is None or len(lines) != len(items):
        lines = [None] * len(items)
    return list(zip(lines, items))


def _gold_of(row: Any) -> tuple[str | None, str | None]:
    """``(column, gold)`` of a chain-of-thought row without a rationale column, else ``(None, None)``."""
    if not isinstance(row, Mapping) or any(row.get(c) is not None for c in COMMON_COLUMNS["rationale"]):
        return None, None
    if not any(row.get(c) is not None for c in COMMON_COLUMNS["cot"]):
        return None, None
    for column in GOLD_COLUMNS:
        value = row.get(column)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
            return column, str(value)
    return None, None


def load_teacher_outputs(
    path: str | Path,
    *,
    answer_phrases: Iterable[str] = DEFAULT_ANSWER_PHRASES,
    task: str | None = None,
    require_correct: bool = True,
    skip_invalid: bool = False,
    column_map: Mapping[str, str] | None = None,
    report: LoadReport | None = None,
) -> list[RationaleRecord]:
    """Records from one teacher-output file (layouts in the module docstring).

    ``task`` names the task when rows carry none (default: the file name before the first dot).
    """
    path = Path(path)
    if not path.exists():
        raise RecordError(str(path), None, None, "file not found")
    report = report if report is not None else LoadReport()
    rows = json_rows(path) if path.suffix == ".json" else list(read_jsonl_rows(path))
    answer_phrases = tuple(answer_phrases)
    default_task = task or path.name.split(".")[0]
    records = validate_rows(
        rows,
        source=str(path),
        column_map=column_map,
        answer_phrases=answer_phrases,
        skip_invalid=skip_invalid,
        default_task=default_task,
        report=report,
    )
    if not require_correct:
        return records
    kept: list[RationaleRecord] = []
    # validate_rows keeps row order, so pair the surviving records with their rows by walking both
    remaining = iter(records)
    current = next(remaining, None)
    for index, (_, row) in enumerate(rows):
        if current is None:
            break
        expected_id = _row_id(row, default_task, index)
        if expected_id != current.id:
            continue  # this row was skipped as invalid
        column, gold = _gold_of(row)
        if gold is not None and not answers_match(current.answer, gold, current.choices):
            report.kept -= 1
            report.skipped += 1
            report.reasons[f"{column}: wrong answer"] += 1
        else:
            kept.append(current)
        current = next(remaining, None)
    return kept


def _row_id(row: Any, default_task: str, index: int) -> str | None:
    if not isinstance(row, Mapping):
        return None
    for column in COMMON_COLUMNS["id"]:
        if row.get(column) is not None:
            return str(row[column])
    return f"{default_task}-{index}"
