"""Rationale records -> a tokenized :class:`datasets.Dataset` with per-token segment ids.

Columns of the result: ``input_ids``, ``labels`` (``-100`` on prompt tokens) and ``segment_ids``
(:class:`~trl_safedistill.formats.Segment`: 0 prompt, 1 rationale, 2 answer), all of one length,
already truncated to ``max_length``, so TRL's own preparation leaves them aligned. ``cascade``
yields two rows per record (q->r and (q, r)->a) that stay adjacent unless the trainer shuffles.

The ``compressed`` format needs each record's compressed rationales: the ``compressed`` column of
``trl-safedistill compress`` output (``{ratio_key(g): text}`` per row), which a record has no field
for. :func:`records_from_rows` keeps it by record id when given a ``compressions`` dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from datasets import Dataset

from .formats import DistillFormat, Segment, get_format, tokenize_sequence
from .formats.compressed import compressed_mapping
from .records import RationaleRecord, validate_rows

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
) -> list[RationaleRecord]:
    """Validate rows of a record-like dataset (row numbers reported 1-based).

    With ``compressions`` (a dict), each kept row's ``compressed`` mapping is stored there under its record id.
    """
    return validate_rows(
        ((i + 1, dict(row)) for i, row in enumerate(rows)),
        source=source,
        skip_invalid=skip_invalid,
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
) -> Dataset:
    """Render every record in ``fmt`` and tokenize it; rows left without a target token are dropped."""
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    rows: dict[str, list] = {"input_ids": [], "labels": [], "segment_ids": [], "record_id": []}
    for record in records:
        for sequence in fmt.sequences(record):
            example = tokenize_sequence(
                tokenizer, sequence, chat=chat, max_length=max_length, truncation_mode=truncation_mode
            )
            # Position 0 is never predicted: a row needs a target after it
            if not any(segment != Segment.PROMPT for segment in example["segment_ids"][1:]):
                continue
            for key in ("input_ids", "labels", "segment_ids"):
                rows[key].append(example[key])
            rows["record_id"].append(record.id)
    return Dataset.from_dict(rows)


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
