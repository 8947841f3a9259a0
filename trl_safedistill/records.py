"""The rationale record: one teacher chain-of-thought for one question, and its validation.

Every data source (JSONL files, Hugging Face datasets, the shipped ``bbh-cot`` rationales, teacher
generation, synthetic problems) yields :class:`RationaleRecord` objects, and every format renders them.
A record is either whole and valid or it is not produced at all: the loader raises a
:class:`RecordError` naming the file, the line and the field, or (with ``skip_invalid=True``) skips
the record and counts it in a :class:`LoadReport`, with its line number. A line that is not valid
UTF-8 or not valid JSON is such a record too. Nothing half-parsed reaches training.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

#: Answer phrases tried, in order, when a single chain-of-thought string must be split into rationale
#: and answer. CasCoD's teacher prompts end with the first one, the BBH prompts with the second.
DEFAULT_ANSWER_PHRASES: tuple[str, ...] = ("Therefore, the answer is", "So the answer is", "The answer is")


class RecordError(UserError):
    """One invalid record: ``source:line: field 'name': reason`` (a :class:`~trl_safedistill.errors.UserError`)."""

    def __init__(self, source: str, line: int | None, field_name: str | None, reason: str):
        self.source, self.line, self.field, self.reason = source, line, field_name, reason
        where = source if line is None else f"{source}:{line}"
        what = f"field '{field_name}': " if field_name else ""
        super().__init__(f"{where}: {what}{reason}")


@dataclass(frozen=True)
class RationaleRecord:
    """One question with the teacher's rationale and answer.

    Attributes:
        id: stable identifier, unique within a dataset (used for splits and resumption).
        question: the question as shown to the student, options included.
        rationale: the step-by-step reasoning, without the final answer sentence.
        answer: the final answer (the text after the answer phrase, without a trailing period).
        task: the task or family name (``"boolean_expressions"``).
        choices: the answer options of a multiple-choice item, if any.
        description: a one-line task description (CasCoD's "Task Description"), if any.
    """

    id: str
    question: str
    rationale: str
    answer: str
    task: str = "default"
    choices: tuple[str, ...] | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["choices"] = list(self.choices) if self.choices is not None else None
        return data


#: How many skipped line numbers :meth:`LoadReport.summary` lists before it only counts the rest.
LISTED_LINES = 20


@dataclass
class LoadReport:
    """What a loader read: records kept and, with ``skip_invalid``, the skipped ones by line and by reason."""

    kept: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)

    def add_error(self, error: RecordError) -> None:
        self.skipped += 1
        kind = _reason_kind(error.reason)
        self.reasons[kind if error.field is None else f"{error.field}: {kind}"] += 1
        if error.line is not None:
            self.lines.append(error.line)
        if len(self.first_errors) < 5:
            self.first_errors.append(str(error))

    def summary(self, source: str | None = None) -> str:
        """One line: how many records were skipped, their line numbers (the first 20, then a count) and why."""
        where = f" of {source}" if source else ""
        listed = ", ".join(str(line) for line in self.lines[:LISTED_LINES])
        more = f" and {len(self.lines) - LISTED_LINES} more" if len(self.lines) > LISTED_LINES else ""
        at = f" at line{'s' if len(self.lines) > 1 else ''} {listed}{more}" if self.lines else ""
        why = "; ".join(f"{reason} x{count}" for reason, count in self.reasons.most_common())
        return f"skipped {self.skipped} invalid record{'s' if self.skipped != 1 else ''}{where}{at} ({why}); kept {self.kept}"


def _reason_kind(reason: str) -> str:
    """A reason without its positions and values, so that equal mistakes count together."""
    return reason.split(" (", 1)[0]


def clean_answer(answer: str) -> str:
    """Strip whitespace, a trailing period and wrapping quotes/asterisks from an answer string."""
    text = answer.strip()
    text = text.strip("*").strip()
    if text.endswith(".") and not text[:-1].rstrip().endswith(".") and not _is_decimal_tail(text):
        text = text[:-1].rstrip()
    return text


def _is_decimal_tail(text: str) -> bool:
    return len(text) >= 2 and text[-2].isdigit() and text.count(".") > 1


def split_cot(cot: str, answer_phrases: Iterable[str] = DEFAULT_ANSWER_PHRASES) -> tuple[str, str] | None:
    """Split one chain-of-thought string at its last answer phrase into ``(rationale, answer)``.

    Returns ``None`` when no phrase occurs or the answer after it is empty.
    """
    for phrase in answer_phrases:
        position = cot.rfind(phrase)
        if position < 0:
            continue
        rationale = cot[:position].strip()
        answer = clean_answer(cot[position + len(phrase) :].strip().split("\n")[0])
        if answer:
            return rationale, answer
    return None


#: Column layouts recognised without a mapping: ``{record field: candidate source columns}``.
COMMON_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("id", "idx", "uid", "question_id"),
    "question": ("question", "input", "prompt", "query"),
    "rationale": ("rationale", "cot", "reasoning", "explanation"),
    "answer": ("answer", "target", "label", "gold"),
    "task": ("task", "task_name", "subset"),
    "choices": ("choices", "options"),
    "description": ("description", "task_description"),
    "cot": ("prediction", "output", "completion", "response", "cot_output"),
}


def record_from_mapping(
    row: Mapping[str, Any],
    *,
    source: str,
    line: int | None,
    column_map: Mapping[str, str] | None = None,
    answer_phrases: Iterable[str] = DEFAULT_ANSWER_PHRASES,
    default_task: str = "default",
    default_id: str | None = None,
) -> RationaleRecord:
    """Build and validate one record from a row of any common layout.

    ``column_map`` maps record fields (``question``, ``rationale``, ``answer``, ``id``, ``task``,
    ``choices``, ``description``, or ``cot`` for a single chain-of-thought string) to source
    columns. Unmapped fields are looked up in :data:`COMMON_COLUMNS`. When there is no rationale
    column, a ``cot`` column (e.g. ``prediction``) is split at the answer phrase; when the row has
    both a rationale and a ``cot``, the rationale wins.

    Raises:
        RecordError: naming ``source``, ``line`` and the offending field.
    """
    if not isinstance(row, Mapping):
        raise RecordError(source, line, None, f"expected a JSON object, got {type(row).__name__}")
    column_map = dict(column_map or {})
    answer_phrases = tuple(answer_phrases)

    def column(name: str) -> str | None:
        if name in column_map:
            mapped = column_map[name]
            if mapped not in row:
                raise RecordError(source, line, mapped, f"mapped column for '{name}' is missing")
            return mapped
        return next((c for c in COMMON_COLUMNS[name] if c in row and row[c] is not None), None)

    def text(name: str, required: bool = True) -> str | None:
        key = column(name)
        if key is None:
            if required:
                raise RecordError(source, line, name, "missing")
            return None
        value = row[key]
        if value is None:
            if required:
                raise RecordError(source, line, key, "is null")
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise RecordError(source, line, key, f"expected a string, got {type(value).__name__}")
        return value

    question = text("question")
    if not question.strip():
        raise RecordError(source, line, column("question"), "is empty")

    rationale = text("rationale", required=False)
    answer = text("answer", required=False)
    if rationale is None:
        cot_key = column("cot")
        if cot_key is None:
            raise RecordError(source, line, "rationale", "missing (no rationale column and no chain-of-thought column)")
        cot = text("cot")
        split = split_cot(cot, answer_phrases)
        if split is None:
            raise RecordError(
                source, line, cot_key, f"rationale has no answer: none of {list(answer_phrases)} is followed by an answer"
            )
        rationale, cot_answer = split
        # With a gold column (input/target/prediction layouts) the gold is the record's answer only if the
        # teacher agreed: the record carries what the rationale concludes.
        answer = cot_answer
    if not rationale.strip():
        raise RecordError(source, line, column("rationale") or "rationale", "rationale is empty")
    if answer is None:
        raise RecordError(source, line, "answer", "missing: the rationale has no answer")
    answer = clean_answer(answer)
    if not answer:
        raise RecordError(source, line, column("answer") or "answer", "answer is empty")

    choices_key = column("choices")
    choices = None
    if choices_key is not None:
        raw = row[choices_key]
        if not isinstance(raw, (list, tuple)) or not all(isinstance(c, str) for c in raw):
            raise RecordError(source, line, choices_key, "expected a list of strings")
        choices = tuple(raw)

    record_id = text("id", required=False) or default_id
    if record_id is None:
        raise RecordError(source, line, "id", "missing")
    return RationaleRecord(
        id=str(record_id),
        question=question.strip(),
        rationale=rationale.strip(),
        answer=answer,
        task=text("task", required=False) or default_task,
        choices=choices,
        description=text("description", required=False),
    )


def read_jsonl_rows(path: str | Path, on_error: Callable[[RecordError], None] | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed_json)`` for each non-blank line of a JSONL (or ``.jsonl.gz``) file.

    A line that is not valid UTF-8 or not valid JSON is a :class:`RecordError` naming the file and line:
    raised, or, with ``on_error``, passed to it and skipped (the next lines are still read).
    """
    path = Path(path)
    with _open_maybe_gzip(path) as handle:
        for number, data in enumerate(handle, start=1):
            try:
                raw = data.decode("utf-8")
            except UnicodeDecodeError as error:
                column = len(data[: error.start].decode("utf-8", errors="replace")) + 1
                bad = RecordError(str(path), number, None,
                                  f"not valid UTF-8 (byte 0x{data[error.start]:02x} at column {column}): save the file as UTF-8")
                if on_error is None:
                    raise bad from None
                on_error(bad)
                continue
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as error:
                bad = RecordError(str(path), number, None, f"not valid JSON ({error.msg} at column {error.colno})")
                if on_error is None:
                    raise bad from None
                on_error(bad)
                continue
            yield number, row


def _open_maybe_gzip(path: Path):
    """The file in binary mode, decompressed when it ends in ``.gz`` (lines are decoded one by one)."""
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rb")
    return path.open("rb")


def validate_rows(
    rows: Iterable[tuple[int | None, Any]],
    *,
    source: str,
    column_map: Mapping[str, str] | None = None,
    answer_phrases: Iterable[str] = DEFAULT_ANSWER_PHRASES,
    skip_invalid: bool = False,
    default_task: str = "default",
    report: LoadReport | None = None,
    on_record: Callable[[RationaleRecord, Any, int | None], None] | None = None,
) -> list[RationaleRecord]:
    """Turn ``(line, row)`` pairs into records; raise on the first bad one unless ``skip_invalid``.

    Duplicate ids are an error too (splits and resumption key on ids). ``on_record(record, row, line)``
    is called for every record kept, with the row it came from, so a caller can keep columns the
    record has no field for (e.g. the ``compressed`` mapping of ``trl-safedistill compress``) by id; a
    :class:`RecordError` it raises counts as the row's validation error.
    """
    report = report if report is not None else LoadReport()
    records: list[RationaleRecord] = []
    seen: dict[str, int | None] = {}
    for index, (line, row) in enumerate(rows):
        try:
            record = record_from_mapping(
                row,
                source=source,
                line=line,
                column_map=column_map,
                answer_phrases=answer_phrases,
                default_task=default_task,
                default_id=f"{default_task}-{index}",
            )
            if record.id in seen:
                raise RecordError(source, line, "id", f"duplicate id '{record.id}' (first at line {seen[record.id]})")
            if on_record is not None:
                on_record(record, row, line)
        except RecordError as error:
            if not skip_invalid:
                raise
            report.add_error(error)
            continue
        seen[record.id] = line
        records.append(record)
        report.kept += 1
    return records


def load_jsonl(
    path: str | Path,
    *,
    column_map: Mapping[str, str] | None = None,
    answer_phrases: Iterable[str] = DEFAULT_ANSWER_PHRASES,
    skip_invalid: bool = False,
    report: LoadReport | None = None,
    on_record: Callable[[RationaleRecord, Any, int | None], None] | None = None,
) -> list[RationaleRecord]:
    """Load rationale records from a JSONL (or ``.jsonl.gz``) file, validating every line.

    With ``skip_invalid=False`` (default) the first bad line raises :class:`RecordError`; nothing is
    returned, so nothing is trained on. With ``skip_invalid=True`` every bad line (invalid record, not
    UTF-8, not JSON) is skipped and counted in ``report`` with its line number. ``on_record`` is passed
    to :func:`validate_rows`.
    """
    path = Path(path)
    if not path.exists():
        raise RecordError(str(path), None, None, "file not found")
    report = report if report is not None else LoadReport()
    return validate_rows(
        read_jsonl_rows(path, on_error=report.add_error if skip_invalid else None),
        source=str(path),
        column_map=column_map,
        answer_phrases=answer_phrases,
        skip_invalid=skip_invalid,
        default_task=path.name.split(".")[0],
        report=report,
        on_record=on_record,
    )


def write_records(path: str | Path, records: Iterable[RationaleRecord]) -> int:
    """Write records as JSONL (the project's own layout) atomically; returns the count."""
    from .atomic import write_jsonl as write_rows

    return write_rows(path, (record.to_dict() for record in records))
