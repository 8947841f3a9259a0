"""Distillation formats: how a rationale record becomes training sequences and inference prompts.

``get_format(name, ...)`` (the one factory, used by the trainer and the evaluation) returns one of
:data:`FORMATS`; every format combines with every method
(entropy masking, slow tuning) through the trainer, which only sees segment ids.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from .adaptive import MODE_TAGS, MODES, AdaptiveFormat
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
    AdaptiveFormat.name: AdaptiveFormat,
}


def get_format(
    name: str,
    answer_phrase: str = "Therefore, the answer is",
    *,
    marker: str | None = None,
    ratios: Sequence[float] | None = None,
    seed: int = 0,
    compressions: Mapping[str, Mapping[str, str]] | None = None,
    inference_ratio: float | None = None,
    modes: Mapping[str, str] | None = None,
) -> DistillFormat:
    """The one factory of formats, for training and evaluation alike.

    ``name``: one of :data:`FORMATS`. ``marker``: the answer-first format's rationale marker (the early-stop
    string at inference). ``ratios``, ``seed``, ``compressions`` and ``inference_ratio``: the compressed
    (TokenSkip) format's training ratios, their per-record draw seed, the compressed texts by record id, and the
    ratio stated in inference prompts. ``modes`` (``adaptive`` only): record id -> ``standard`` | ``answer_first``,
    the router's labels each record is trained with (``adaptive`` also takes ``marker``). An option given for a
    format that has no such setting is an error, never silently ignored.
    """
    if name not in FORMATS:
        raise ValueError(f"unknown distillation format '{name}'; choose one of {sorted(FORMATS)}")
    if marker is not None and name not in (AnswerFirstFormat.name, AdaptiveFormat.name):
        raise ValueError(f"format '{name}': an answer-first marker applies to the answer_first format only "
                         "(and to adaptive, whose answer-first mode uses it)")
    if modes is not None and name != AdaptiveFormat.name:
        raise ValueError(f"format '{name}': router modes apply to the adaptive format only")
    if (ratios is not None or compressions is not None or inference_ratio is not None) and name != CompressedFormat.name:
        raise ValueError(f"format '{name}': compression ratios apply to the compressed format only")
    if name == AdaptiveFormat.name:
        return AdaptiveFormat(answer_phrase=answer_phrase, modes=modes, **({"marker": marker} if marker is not None else {}))
    if name == AnswerFirstFormat.name and marker is not None:
        return AnswerFirstFormat(answer_phrase=answer_phrase, marker=marker)
    if name == CompressedFormat.name:
        options: dict = {"seed": seed, "compressions": dict(compressions or {})}
        if ratios is not None:
            options["ratios"] = ratios
        if inference_ratio is not None:
            options["inference_ratio"] = float(inference_ratio)
        return CompressedFormat(answer_phrase=answer_phrase, **options)
    return FORMATS[name](answer_phrase=answer_phrase)


#: Written beside every saved student (``SafeDistillTrainer.save_model``): the settings of its format that
#: evaluation needs to prompt it as it was trained (format name, answer phrase, answer-first marker).
FORMAT_FILE = "safedistill_format.json"


def format_settings(fmt: DistillFormat) -> dict:
    """The JSON-serialisable settings that :func:`get_format` needs to rebuild ``fmt`` for inference."""
    settings = {"format": fmt.name, "answer_phrase": fmt.answer_phrase}
    if isinstance(fmt, (AnswerFirstFormat, AdaptiveFormat)):
        settings["marker"] = fmt.marker
    return settings


def read_format_settings(directory: str | Path) -> dict | None:
    """The settings saved beside a student in ``directory`` (:data:`FORMAT_FILE`), or ``None`` if it has none."""
    path = Path(directory) / FORMAT_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


__all__ = [
    "FORMATS",
    "FORMAT_FILE",
    "IGNORE_INDEX",
    "MODES",
    "MODE_TAGS",
    "AdaptiveFormat",
    "AnswerFirstFormat",
    "CascadeFormat",
    "CompressedFormat",
    "DistillFormat",
    "Piece",
    "Segment",
    "StandardFormat",
    "TrainingSequence",
    "end_of_turn_text",
    "format_settings",
    "get_format",
    "is_chat_tokenizer",
    "read_format_settings",
    "render_prompt",
    "tokenize_sequence",
    "user_text",
]
