"""Answer extraction and comparison: the answer-consistency filter of CasCoD (arXiv 2405.19842).

CasCoD keeps a teacher chain-of-thought only when the answer after the answer phrase equals the gold
answer. :func:`extract_answer` splits a completion at the (last) answer phrase with
:func:`trl_safedistill.records.split_cot`; :func:`answers_match` compares after normalisation:

* case, surrounding whitespace, quotes, asterisks and a trailing period are ignored;
* multiple-choice letters match in any of the forms ``(A)``, ``A``, ``A)`` or ``(A) option text``;
* numbers match numerically (``5``, ``5.0``, ``1,000`` and ``1000``); a number followed by a unit word
  (``5 apples``) matches the bare number.

The normalisation is this project's choice; it is deliberately strict elsewhere (``red`` never
matches ``dark red``), so the filter keeps only rationales that conclude the gold answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..records import DEFAULT_ANSWER_PHRASES, clean_answer, split_cot

_LETTER = re.compile(r"^\(?([A-Z])\)?(?:\s|$|[.:])")
_NUMBER = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def extract_answer(completion: str, answer_phrase: str = "Therefore, the answer is") -> tuple[str, str] | None:
    """``(rationale, answer)`` from a teacher completion, or ``None`` when it never concludes.

    The configured phrase is tried first, then the project's other phrases
    (:data:`~trl_safedistill.records.DEFAULT_ANSWER_PHRASES`).
    """
    phrases = (answer_phrase,) + tuple(p for p in DEFAULT_ANSWER_PHRASES if p != answer_phrase)
    return split_cot(completion, phrases)


def normalize_answer(answer: str) -> str:
    """Lower-case, strip quotes/asterisks/brackets around the whole answer and a trailing period."""
    text = clean_answer(answer).strip().strip("\"'`").strip()
    return re.sub(r"\s+", " ", text).lower()


def _number(text: str) -> float | None:
    match = _NUMBER.match(text.strip())
    if match is None:
        return None
    rest = text.strip()[match.end() :].strip().rstrip(".").strip()
    if rest and not re.fullmatch(r"[a-z][a-z ]*", rest.lower()):
        return None
    try:
        return float(match.group(0).replace(",", ""))
    except ValueError:  # pragma: no cover - the regex only matches numbers
        return None


def answers_match(predicted: str, gold: str, choices: Iterable[str] | None = None) -> bool:
    """Whether a teacher's extracted answer equals the gold answer (see the module docstring)."""
    pred, want = normalize_answer(predicted), normalize_answer(gold)
    if not pred or not want:
        return False
    if pred == want:
        return True
    letter_gold = _LETTER.match(clean_answer(gold).strip())
    if letter_gold and len(clean_answer(gold).strip().strip("()")) == 1:
        letter_pred = _LETTER.match(clean_answer(predicted).strip())
        if letter_pred:
            return letter_pred.group(1) == letter_gold.group(1)
        options = list(choices or ())
        index = ord(letter_gold.group(1)) - 65
        return 0 <= index < len(options) and normalize_answer(options[index]) == pred
    gold_number, pred_number = _number(want), _number(pred)
    if gold_number is not None and pred_number is not None and want.replace(",", "").replace(".", "").lstrip("+-").isdigit():
        return abs(gold_number - pred_number) < 1e-9
    return False
