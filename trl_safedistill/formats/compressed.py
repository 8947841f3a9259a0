"""``compressed``: TokenSkip-style controllable CoT compression (Xia et al., arXiv 2502.12067).

Each record is trained at one compression ratio ``g`` drawn from :attr:`CompressedFormat.ratios`
(TokenSkip: 0.5 ... 0.9 and 1.0), so the student learns to shorten its reasoning on request:

* prompt: the usual user text plus the line ``Compression ratio: {g}`` (the paper puts the ratio after
  the question; the wording is this project's choice);
* target: the rationale compressed to about ``g`` of its tokens (``g = 1`` is the original
  rationale), then ``\\n{answer phrase} {answer}.``, never compressed.

``g`` is drawn per record, deterministically from its id:
``g = ratios[int(sha256(f"{seed}:{id}")[:8], 16) % len(ratios)]``, so it is stable across runs,
shuffles and resumption. The compressed rationales are produced beforehand by
``trl-safedistill compress`` (:mod:`trl_safedistill.data.compress`); its output holds, per record, a
``compressed`` mapping from ``f"{g:g}"`` to text. The format finds them on the record
(:class:`CompressedRecord`, from :func:`load_compressed`) or in a mapping / output file given as
``compressions=``. At inference the prompt states :attr:`CompressedFormat.inference_ratio` (default 1:
the uncompressed rationale; ``safedistill-hf`` sets it from its ``compression_ratio`` model_arg,
``trl-safedistill eval`` from ``--adapter DIR@compressed:G``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records import RationaleRecord, RecordError, read_jsonl_rows, validate_rows
from .base import DistillFormat, Piece, Segment, TrainingSequence, user_text

DEFAULT_RATIOS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def ratio_key(g: float) -> str:
    """The key of ratio ``g`` in a ``compressed`` mapping: ``f"{g:g}"`` (``0.5`` -> ``"0.5"``, ``1.0`` -> ``"1"``)."""
    return f"{float(g):g}"


def choose_ratio(record_id: str, ratios: Sequence[float], seed: int = 0) -> float:
    """The ratio of one record: ``ratios[int(sha256(f"{seed}:{id}")[:8], 16) % len(ratios)]``."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).hexdigest()
    return float(ratios[int(digest[:8], 16) % len(ratios)])


#: The column holding a record's compressed rationales, ``{ratio_key(g): text}`` (``trl-safedistill compress``).
COMPRESSED_COLUMN = "compressed"


def compressed_mapping(row: Any, source: str, line: int | None) -> dict[str, str] | None:
    """A row's ``compressed`` mapping with keys as :func:`ratio_key` writes them; ``None`` when it has none.

    Null entries are left out: a dataset column of mappings (Arrow structs) holds every ratio any row
    has, null where this row has none. Anything but a mapping of ratio -> text raises :class:`RecordError`.
    """
    value = row.get(COMPRESSED_COLUMN) if isinstance(row, Mapping) else None
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(text is None or isinstance(text, str) for text in value.values()):
        raise RecordError(source, line, COMPRESSED_COLUMN, "expected a mapping of ratio -> compressed rationale")
    mapping = {}
    for key, text in value.items():
        try:
            g = float(key)
        except (TypeError, ValueError):
            raise RecordError(source, line, COMPRESSED_COLUMN, f"key '{key}' is not a ratio") from None
        if text is not None:
            mapping[ratio_key(g)] = text
    return mapping


@dataclass(frozen=True)
class CompressedRecord(RationaleRecord):
    """A record with its rationale compressed at several ratios: ``{ratio_key(g): text}``."""

    compressed: Mapping[str, str] = field(default_factory=dict)


def load_compressed(path: str | Path) -> list[CompressedRecord]:
    """Records written by ``trl-safedistill compress``, with their ``compressed`` mappings."""
    path = Path(path)
    rows = list(read_jsonl_rows(path))
    records = validate_rows(rows, source=str(path), default_task=path.name.split(".")[0])
    out = []
    for (line, row), record in zip(rows, records):
        mapping = compressed_mapping(row, str(path), line)
        if mapping is None:
            raise RecordError(str(path), line, COMPRESSED_COLUMN, "missing or not a mapping of ratio -> text")
        out.append(CompressedRecord(**{**record.__dict__, "compressed": mapping}))
    return out


class CompressedFormat(DistillFormat):
    name = "compressed"

    def __init__(
        self,
        answer_phrase: str = "Therefore, the answer is",
        ratios: Sequence[float] = DEFAULT_RATIOS,
        seed: int = 0,
        compressions: Mapping[str, Mapping[str, str]] | str | Path | None = None,
        inference_ratio: float = 1.0,
    ):
        super().__init__(answer_phrase)
        if not ratios or any(not 0 < float(g) <= 1 for g in ratios):
            raise ValueError(f"compression ratios must lie in (0, 1], got {list(ratios)}")
        self.ratios = tuple(float(g) for g in ratios)
        self.seed = seed
        if not 0 < float(inference_ratio) <= 1:
            raise ValueError(f"the inference compression ratio must lie in (0, 1], got {inference_ratio}")
        self.inference_ratio = float(inference_ratio)
        if isinstance(compressions, (str, Path)):
            compressions = {r.id: r.compressed for r in load_compressed(compressions)}
        self.compressions: Mapping[str, Mapping[str, str]] = compressions or {}

    @staticmethod
    def ratio_line(g: float) -> str:
        return f"\nCompression ratio: {ratio_key(g)}"

    def prompt_text(self, question: str, description: str | None = None) -> str:
        return user_text(question, description) + self.ratio_line(self.inference_ratio)

    def rationale_at(self, record: RationaleRecord, g: float) -> str:
        """The record's rationale compressed to ratio ``g`` (the original at ``g = 1``)."""
        if g >= 1.0:
            return record.rationale
        mapping: Any = getattr(record, "compressed", None) or self.compressions.get(record.id) or {}
        text = mapping.get(ratio_key(g))
        if text is None:
            raise ValueError(
                f"record '{record.id}' has no rationale compressed at ratio {ratio_key(g)}: run "
                f"`trl-safedistill compress --ratios {','.join(ratio_key(r) for r in self.ratios)}` and load its output"
            )
        return text

    def sequences(self, record: RationaleRecord) -> list[TrainingSequence]:
        g = choose_ratio(record.id, self.ratios, self.seed)
        prompt = user_text(record.question, record.description) + self.ratio_line(g)
        targets = (
            Piece(self.rationale_at(record, g), Segment.RATIONALE),
            Piece("\n" + self.answer_sentence(record.answer), Segment.ANSWER),
        )
        return [TrainingSequence(prompt, self.assistant_prefix, targets)]


def dump_compressed_row(record: RationaleRecord, compressed: Mapping[str, str], tokens: Mapping[str, int]) -> str:
    """One output line of ``trl-safedistill compress``."""
    return json.dumps({**record.to_dict(), "compressed": dict(compressed), "tokens": dict(tokens)}, ensure_ascii=False)
