"""Rationale records -> a tokenized :class:`datasets.Dataset` with per-token segment ids.

Columns of the result: ``input_ids``, ``labels`` (``-100`` on prompt tokens) and ``segment_ids``
(:class:`~trl_safedistill.formats.Segment`: 0 prompt, 1 rationale, 2 answer), all of one length,
already truncated to ``max_length``, so TRL's own preparation leaves them aligned. ``cascade``
yields two rows per record (q->r and (q, r)->a) that stay adjacent unless the trainer shuffles.

Records longer than ``max_length`` (in any of their sequences) follow an explicit policy,
:data:`OVERLONG_POLICIES` (``SafeDistillConfig.overlong``): ``error`` (the default: stop, naming the
first such record, its length and the fix), ``skip`` (leave them out), ``truncate_rationale`` (cut the
rationale's tail until every sequence fits, so the answer, the answer phrase and the end of turn stay;
in ``cascade`` both sequences carry the shortened rationale) or ``truncate`` (cut each sequence at
``max_length`` as TRL does, the answer too: for reproducing runs made that way). An
:class:`OverlongReport` counts the records each policy touched.

The ``compressed`` format needs each record's compressed rationales: the ``compressed`` column of
``trl-safedistill compress`` output (``{ratio_key(g): text}`` per row), which a record has no field
for. :func:`records_from_rows` keeps it by record id when given a ``compressions`` dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from datasets import Dataset

from .errors import UserError
from .formats import CompressedFormat, DistillFormat, Segment, get_format, tokenize_sequence
from .formats.base import OVERLONG_POLICIES, cut_to_length
from .formats.compressed import CompressedRecord, choose_ratio, compressed_mapping, ratio_key
from .records import LoadReport, RationaleRecord, validate_rows


class OverlongRecordError(UserError):
    """Records longer than ``max_length`` under the ``error`` policy (or too long even without a rationale)."""


@dataclass
class OverlongReport:
    """Which records were longer than ``max_length`` and what the policy did with them.

    ``records`` holds ``(record id, tokens of its longest sequence)`` of every affected record, in order.
    """

    policy: str
    max_length: int | None
    total: int = 0
    records: list[tuple[str, int]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.records)

    def summary(self, source: str = "dataset") -> str:
        """One line: how many of ``source``'s records were too long, the longest, and what was done."""
        done = {
            "error": "stopped",
            "skip": "left out",
            "truncate_rationale": "rationale shortened to fit, answer kept",
            "truncate": "cut at max_length (the answer may be lost)",
        }[self.policy]
        longest = max(self.records, key=lambda item: item[1]) if self.records else None
        worst = f"; longest: record '{longest[0]}', {longest[1]} tokens" if longest else ""
        return (f"overlong: {self.count} of {self.total} records of {source} longer than max_length {self.max_length} "
                f"tokens: {done} (overlong: {self.policy}){worst}")

RECORD_COLUMNS = ("question", "rationale", "answer")


def is_record_dataset(column_names: Iterable[str]) -> bool:
    """Whether a dataset holds rationale records (rather than text, messages or token ids)."""
    names = set(column_names)
    return set(RECORD_COLUMNS) <= names and "input_ids" not in names


def keep_compressions(compressions: dict[str, dict[str, str]], source: str):
    """An ``on_record`` hook for :func:`~trl_safedistill.records.validate_rows`: stores each row's mapping by id."""

    def on_record(record: RationaleRecord, row: Any, line: int | None) -> None:
        mapping = compressed_mapping(row, source, line)
        if mapping is not None:
            compressions[record.id] = mapping

    return on_record


def records_from_rows(
    rows: Iterable[Mapping[str, Any]],
    source: str,
    skip_invalid: bool = False,
    compressions: dict[str, dict[str, str]] | None = None,
    report: LoadReport | None = None,
) -> list[RationaleRecord]:
    """Validate rows of a record-like dataset (row numbers reported 1-based).

    With ``compressions`` (a dict), each kept row's ``compressed`` mapping is stored there under its record id;
    ``report`` counts the rows kept and skipped.
    """
    return validate_rows(
        ((i + 1, dict(row)) for i, row in enumerate(rows)),
        source=source,
        skip_invalid=skip_invalid,
        report=report,
        on_record=keep_compressions(compressions, source) if compressions is not None else None,
    )


def tokenize_records(
    records: Iterable[RationaleRecord],
    tokenizer: Any,
    fmt: DistillFormat | str = "standard",
    *,
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
    chat: bool | None = None,
    overlong: str = "error",
    report: OverlongReport | None = None,
    source: str = "dataset",
) -> Dataset:
    """Render every record in ``fmt`` and tokenize it; rows left without a target token are dropped.

    A record with a sequence longer than ``max_length`` follows ``overlong`` (:data:`OVERLONG_POLICIES`,
    see the module docstring) and is counted in ``report``. ``error`` raises :class:`OverlongRecordError`
    naming ``source``, the count, the first such record and the fix, after every record was measured.
    """
    if overlong not in OVERLONG_POLICIES:
        raise UserError(f"overlong must be one of {', '.join(OVERLONG_POLICIES)}, got '{overlong}'")
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    report = report if report is not None else OverlongReport(overlong, max_length)
    rows: dict[str, list] = {"input_ids": [], "labels": [], "segment_ids": [], "record_id": []}
    for record in records:
        report.total += 1
        examples = [tokenize_sequence(tokenizer, sequence, chat=chat) for sequence in fmt.sequences(record)]
        longest = max((len(example["input_ids"]) for example in examples), default=0)
        if max_length is not None and longest > max_length:
            report.records.append((record.id, longest))
            if overlong in ("error", "skip"):
                continue
            if overlong == "truncate":
                examples = [cut_to_length(example, max_length, truncation_mode) for example in examples]
            else:
                examples = _shorten_rationale(record, tokenizer, fmt, chat, max_length, longest, source)
        for example in examples:
            # Position 0 is never predicted: a row needs a target after it
            if not any(segment != Segment.PROMPT for segment in example["segment_ids"][1:]):
                continue
            for key in ("input_ids", "labels", "segment_ids"):
                rows[key].append(example[key])
            rows["record_id"].append(record.id)
    if overlong == "error" and report.records:
        first_id, first_length = report.records[0]
        raise OverlongRecordError(
            f"{source}: {report.count} of {report.total} records are longer than max_length {max_length} tokens in the "
            f"'{fmt.name}' format (first: record '{first_id}', {first_length} tokens), and cutting them would lose the "
            "answer: raise max_length, or set overlong: truncate_rationale (shorten the rationale, keep the answer) or "
            "overlong: skip (leave them out)"
        )
    return Dataset.from_dict(rows)


def _trained_rationale(fmt: DistillFormat, record: RationaleRecord) -> tuple[str, float | None]:
    """The rationale text ``fmt`` trains ``record`` on, and the compression ratio it was drawn at (``compressed``)."""
    if isinstance(fmt, CompressedFormat):
        g = choose_ratio(record.id, fmt.ratios, fmt.seed)
        return fmt.rationale_at(record, g), g
    return record.rationale, None


def _with_rationale(fmt: DistillFormat, record: RationaleRecord, text: str, g: float | None) -> RationaleRecord:
    """``record`` whose trained rationale (:func:`_trained_rationale`) is ``text``."""
    if g is None or g >= 1.0:
        return replace(record, rationale=text)
    mapping = dict(getattr(record, "compressed", None) or fmt.compressions.get(record.id) or {})
    mapping[ratio_key(g)] = text
    fields = {key: value for key, value in record.__dict__.items() if key != "compressed"}
    return CompressedRecord(**fields, compressed=mapping)


def _shorten_rationale(record: RationaleRecord, tokenizer: Any, fmt: DistillFormat, chat: bool | None,
                       max_length: int, length: int, source: str) -> list[dict[str, list[int]]]:
    """``overlong: truncate_rationale``: the record's sequences with the longest head of its rationale that fits.

    The rationale is cut at a token boundary (the most tokens for which every sequence fits, by bisection); the
    answer, the answer phrase and the end of turn are untouched. A record that does not fit with one rationale
    token raises :class:`OverlongRecordError`.
    """
    text, g = _trained_rationale(fmt, record)
    fast = getattr(tokenizer, "is_fast", False)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast)
    ids = list(encoding["input_ids"])

    def head(n: int) -> str:
        if n == 0:
            return ""
        return text[: encoding["offset_mapping"][n - 1][1]] if fast else tokenizer.decode(ids[:n])

    def fitting(n: int) -> list[dict[str, list[int]]] | None:
        shortened = _with_rationale(fmt, record, head(n).rstrip(), g)
        examples = [tokenize_sequence(tokenizer, sequence, chat=chat) for sequence in fmt.sequences(shortened)]
        return examples if all(len(example["input_ids"]) <= max_length for example in examples) else None

    low, high, best = 1, len(ids) - 1, None
    while low <= high:
        middle = (low + high) // 2
        examples = fitting(middle)
        if examples is not None:
            best, low = examples, middle + 1
        else:
            high = middle - 1
    if best is None:
        raise OverlongRecordError(
            f"{source}: record '{record.id}' is {length} tokens, and its question and answer alone leave no room for "
            f"a rationale within max_length {max_length}: raise max_length, or set overlong: skip (leave it out)"
        )
    return best


class SegmentCollator:
    """Wraps TRL's collator: pads ``segment_ids`` (and concatenates them when padding-free) like ``labels``."""

    def __init__(self, base: Any):
        self.base = base

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        segments = [example.pop("segment_ids", None) for example in examples]
        batch = self.base(examples)
        if any(s is None for s in segments):
            return batch
        labels = batch["labels"]
        if labels.shape[0] == 1 and len(examples) > 1:  # padding-free: one concatenated row
            flat = [token for row in segments for token in row]
            padded = torch.zeros_like(labels)
            padded[0, : len(flat)] = torch.tensor(flat)
        else:
            padded = torch.zeros_like(labels)
            for row, values in enumerate(segments):
                padded[row, : len(values)] = torch.tensor(values)
        batch["segment_ids"] = padded
        return batch
