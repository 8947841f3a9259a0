"""The calibration/evaluation split of prompts: one fixed hash rule that every safety step of this project uses.

A prompt is in the ``eval`` part (held out: evaluated, never trained on) iff the first byte of its sha256 is
below :data:`SAFETY_EVAL_CUT`; every other prompt is in the ``align`` part (safety alignment, refusal mixing).
A prompt's part depends on its text alone, so adding sources never moves a prompt across the split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

#: The held-out rule: a prompt is in the ``eval`` part iff the first byte of sha256(prompt, UTF-8) is
#: below this cut (80/256 = 31%, about 160 of the 520 AdvBench goals); all others form ``align``.
SAFETY_EVAL_CUT = 80


def _split_byte(prompt: str) -> int:
    return hashlib.sha256(prompt.encode("utf-8")).digest()[0]


def safety_split(prompts: Iterable[str], role: str) -> list[str]:
    """The ``align`` or ``eval`` part of ``prompts``, by a fixed hash rule; order kept.

    Rule: ``eval`` iff ``sha256(prompt.encode("utf-8")).digest()[0] < SAFETY_EVAL_CUT`` (80), else
    ``align``. The two parts are disjoint and together cover the input; a prompt's part never depends
    on the other prompts, so adding sources never moves a prompt across the split.
    """
    if role not in {"align", "eval"}:
        raise ValueError(f"safety_split: role must be 'align' or 'eval', got {role!r}")
    held_out = role == "eval"
    return [p for p in prompts if (_split_byte(p) < SAFETY_EVAL_CUT) == held_out]


def stable_order(items: Iterable[str]) -> list[str]:
    """Items sorted by sha256 of their text: a fixed order independent of the source's order."""
    return sorted(items, key=lambda text: hashlib.sha256(text.encode("utf-8")).hexdigest())
