"""The one answer matcher of the project: extraction and comparison for chain-of-thought outputs (BBH style).

Used by evaluation (exact-match tasks, :func:`score_generation`) and by data (CasCoD's answer-consistency
filter of teacher rationales, arXiv 2405.19842: :func:`split_completion` + :func:`answers_match`), so a
teacher rationale is kept exactly when the evaluation would score its answer correct.

:func:`extract_answer` finds the text after the *last* answer phrase (the format's, then the common
fallbacks ``So the answer is`` / ``The answer is`` / ``Answer:``), keeps its first line and, when the
item has choices, maps it to one choice: an option letter ``(A)``/``A)``/``A``, or a choice text that
matches exactly or occurs as whole words (earliest, then longest). With no answer phrase it only
accepts a last line that *is* a choice. Anything else is ``None`` (counted wrong), never an exception.

:func:`is_correct` compares a prediction with gold answers after normalisation: case, outer
punctuation, quotes and markdown stripped; numbers compared as numbers (``"7"``, ``"7.0"``, ``"1,000"``,
``"seven"``, and a number followed by unit words, ``"5 apples"``); option letters with or without
parentheses. It is otherwise strict: ``red`` never matches ``dark red``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .records import DEFAULT_ANSWER_PHRASES, split_cot

DEFAULT_ANSWER_PHRASE = "Therefore, the answer is"
FALLBACK_PHRASES: tuple[str, ...] = ("So the answer is", "The answer is", "the answer is", "Answer:", "answer:")

_LETTER_PAREN = re.compile(r"\(([A-Za-z])\)")
_LETTER_ALONE = re.compile(r"^\s*\(?([A-Za-z])(?:\)|\.|:|,)?\s*(?:$|\)|\s)")
_NUMBER = re.compile(r"^[-+]?\d+(?:,\d{3})*(?:\.\d+)?$")
_NUMBER_WORDS = {
    word: index
    for index, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}


def answer_span(text: str, answer_phrase: str = DEFAULT_ANSWER_PHRASE) -> str | None:
    """The first line after the last occurrence of the answer phrase (or a fallback phrase), stripped."""
    for phrase in (answer_phrase, *FALLBACK_PHRASES):
        if not phrase:
            continue
        position = text.rfind(phrase)
        if position < 0:
            continue
        rest = text[position + len(phrase) :].lstrip(" :\t")
        line = rest.split("\n", 1)[0].strip()
        if line:
            return line
    return None


def normalise(text: str) -> str:
    """Lower case, markdown/quotes/outer punctuation stripped, inner whitespace collapsed."""
    text = text.strip().replace("**", "").replace("`", "")
    text = re.sub(r"\s+", " ", text)
    text = text.strip(" \"'\u201c\u201d\u2018\u2019*_")
    text = text.rstrip(".!;:,").strip()
    text = text.strip(" \"'\u201c\u201d\u2018\u2019*_")
    return text.lower()


def _is_letter_choice(choice: str) -> bool:
    return bool(re.fullmatch(r"\([A-Za-z]\)", choice.strip()))


def match_choice(span: str, choices: Sequence[str], strict: bool = False) -> str | None:
    """The choice that ``span`` names, or ``None``.

    Order: exact (normalised) equality; an option letter (``(B)``, or a leading ``B``/``B)``/``B.``) when
    choices are letters; then (unless ``strict``) a choice text occurring as whole words, the
    earliest one, ties broken by length.
    """
    if not span:
        return None
    wanted = normalise(span)
    for choice in choices:
        if normalise(choice) == wanted:
            return choice
    letters = {choice.strip()[1].upper(): choice for choice in choices if _is_letter_choice(choice)}
    if letters:
        if strict:
            whole = re.fullmatch(r"\(?([A-Za-z])\)?\.?", span.strip())
            return letters.get(whole.group(1).upper()) if whole else None
        found = _LETTER_PAREN.search(span)
        if found and found.group(1).upper() in letters:
            return letters[found.group(1).upper()]
        alone = _LETTER_ALONE.match(span)
        if alone and alone.group(1).upper() in letters and (alone.group(1).isupper() or len(span.strip()) <= 3):
            return letters[alone.group(1).upper()]
    if strict:
        return None
    best: tuple[int, int, str] | None = None
    for choice in choices:
        key = normalise(choice)
        if not key or _is_letter_choice(choice):
            continue
        found = re.search(r"(?<![\w-])" + re.escape(key) + r"(?![\w-])", wanted)
        if found:
            candidate = (found.start(), -len(key), choice)
            if best is None or candidate < best:
                best = candidate
    return best[2] if best else None


def extract_answer(
    text: str | None,
    choices: list[str] | None = None,
    answer_phrase: str = DEFAULT_ANSWER_PHRASE,
) -> str | None:
    """The answer a generation gives, or ``None`` when it gives none (never raises on text input).

    Args:
        text: the generated text (rationale and answer sentence, in any format's order).
        choices: option letters (``["(A)", "(B)"]``) and/or option texts; the result is one of them.
        answer_phrase: the format's answer phrase, tried before the fallbacks.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    span = answer_span(text, answer_phrase)
    if choices:
        choices = [c for c in choices if isinstance(c, str) and c.strip()]
        if span is not None:
            return match_choice(span, choices)
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return match_choice(lines[-1], choices, strict=True) if lines else None
    if span is None:
        return None
    answer = span.strip().strip("*").strip()
    if answer.endswith("."):
        answer = answer[:-1].rstrip()
    return answer or None


def _as_number(text: str) -> float | None:
    """The number ``text`` states: digits or a number word, optionally followed by unit words (``5 apples``)."""
    value = normalise(text).replace(",", "")
    unit = re.fullmatch(r"(\S+)(?: [a-z]+)+", value)
    if unit and (unit.group(1) in _NUMBER_WORDS or _NUMBER.match(unit.group(1))):
        value = unit.group(1)
    if value in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[value])
    if _NUMBER.match(value):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def is_correct(prediction: str | None, golds: Iterable[str]) -> bool:
    """Whether ``prediction`` equals any gold answer after :func:`normalise` (numbers compared numerically)."""
    if prediction is None:
        return False
    predicted = normalise(prediction)
    predicted_number = _as_number(prediction)
    for gold in golds:
        if not isinstance(gold, str):
            gold = str(gold)
        if predicted == normalise(gold):
            return True
        gold_number = _as_number(gold)
        if predicted_number is not None and gold_number is not None and abs(predicted_number - gold_number) < 1e-6:
            return True
        if _is_letter_choice(gold) and predicted.strip("()") == gold.strip().strip("()").lower():
            return True
    return False


def score_generation(doc: Mapping[str, Any], response: str | None, answer_phrase: str = DEFAULT_ANSWER_PHRASE) -> float:
    """1.0 when the response's extracted answer is right for an evaluation document, else 0.0.

    The document has ``golds`` (list of accepted answers), and optionally ``options`` (texts) and
    ``labels`` (their letters); a prediction naming an option text is mapped to its letter.
    """
    options = list(doc.get("options") or [])
    labels = list(doc.get("labels") or [])
    choices = (labels + options) if labels else (options or None)
    prediction = extract_answer(response, choices, answer_phrase)
    if prediction is not None and labels and prediction in options:
        prediction = labels[options.index(prediction)]
    return float(is_correct(prediction, doc.get("golds") or []))


def split_completion(completion: str, answer_phrase: str = DEFAULT_ANSWER_PHRASE) -> tuple[str, str] | None:
    """``(rationale, answer)`` from a teacher completion, or ``None`` when it never concludes.

    The configured phrase is tried first, then the project's other phrases
    (:data:`~trl_safedistill.records.DEFAULT_ANSWER_PHRASES`), at their last occurrence
    (:func:`~trl_safedistill.records.split_cot`).
    """
    phrases = (answer_phrase,) + tuple(p for p in DEFAULT_ANSWER_PHRASES if p != answer_phrase)
    return split_cot(completion, phrases)


def answers_match(predicted: str, gold: str, choices: Sequence[str] | None = None) -> bool:
    """Whether an extracted answer ``predicted`` equals ``gold`` under the evaluation's rules.

    With ``choices`` (option texts, lettered ``(A)``, ``(B)``, ... in order), ``predicted`` may name the option
    by letter (``(B)``, ``B``) or by its text, and a letter ``gold`` also accepts its option's text.
    """
    options = [c for c in (choices or ()) if isinstance(c, str) and c.strip()]
    golds = [gold]
    if options:
        labels = [f"({chr(65 + i)})" for i in range(len(options))]
        letter = re.fullmatch(r"\(?([A-Za-z])\)?", gold.strip())
        if letter and 0 <= ord(letter.group(1).upper()) - 65 < len(options):
            golds.append(options[ord(letter.group(1).upper()) - 65])
        picked = match_choice(predicted, labels + options)
        if picked is not None:
            return is_correct(picked, golds) or (picked in options and is_correct(labels[options.index(picked)], golds))
    return is_correct(predicted, golds)
