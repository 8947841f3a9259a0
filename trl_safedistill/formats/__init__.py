"""Distillation formats: how a rationale record becomes training sequences and inference prompts.

``get_format(name)`` returns one of :data:`FORMATS`; every format combines with every method
(entropy masking, slow tuning) through the trainer, which only sees segment ids.
"""

from __future__ import annotations

from .answer_first import AnswerFirstFormat
from .base import (
    IGNORE_INDEX,
    DistillFormat,
    Piece,
    Segment,
    TrainingSequence,
    end_of_turn_text,
    is_chat_tokenizer,
    render_prompt,
    tokenize_sequence,
    user_text,
)
from .cascade import CascadeFormat
from .compressed import CompressedFormat
from .standard import StandardFormat

FORMATS: dict[str, type[DistillFormat]] = {
    StandardFormat.name: StandardFormat,
    CascadeFormat.name: CascadeFormat,
    AnswerFirstFormat.name: AnswerFirstFormat,
    CompressedFormat.name: CompressedFormat,
}


def get_format(name: str, answer_phrase: str = "Therefore, the answer is") -> DistillFormat:
    """The format called ``name`` (``standard``, ``cascade``, ``answer_first``)."""
    if name not in FORMATS:
        raise ValueError(f"unknown distillation format '{name}'; choose one of {sorted(FORMATS)}")
    return FORMATS[name](answer_phrase=answer_phrase)


__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "AnswerFirstFormat",
    "CascadeFormat",
    "CompressedFormat",
    "DistillFormat",
    "Piece",
    "Segment",
    "StandardFormat",
    "TrainingSequence",
    "end_of_turn_text",
    "get_format",
    "is_chat_tokenizer",
    "render_prompt",
    "tokenize_sequence",
    "user_text",
]
