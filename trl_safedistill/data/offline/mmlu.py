"""MMLU questions from the ``lm-eval==0.4.13`` wheel: the out-of-domain (OOD) multiple-choice items.

lm-eval ships the chain-of-thought few-shot prompts of its ``mmlu_flan_cot_fewshot`` tasks as one file,
``lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json``: for each of MMLU's 57 subjects (Hendrycks et al. 2021,
MIT), a prompt of about five dev-set questions, each written as::

    Q: <question>
    (A) <option> (B) <option> (C) <option> (D) <option>
    A: Let's think step by step. <rationale> The answer is (C).

:func:`mmlu_questions` parses every such block into ``(subject, question, options, gold letter)``. A block whose
options line or final answer does not parse is counted in :attr:`MmluQuestions.skipped` and left out, never
guessed. Topics (algebra, law, medicine, history ...) lie outside the 14 BBH tasks the students are trained on,
which is what makes them OOD here; being few-shot exemplars, they may have been seen in a model's pretraining.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .archives import OfflineDataError, read_wheel_member

MMLU_MEMBER = "lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
_OPTION = re.compile(r"\(([A-D])\)\s*(.*?)\s*(?=\([A-D]\)\s|$)", re.DOTALL)
_ANSWER = re.compile(r"answer is \(?([A-D])\)?\W*$")


@dataclass(frozen=True)
class MmluQuestion:
    """One parsed question: its subject (``high_school_physics``), text, four options and gold letter."""

    subject: str
    question: str
    options: tuple[str, ...]
    gold: str


@dataclass
class MmluQuestions:
    """The parsed questions (in file order, exact repeats dropped) and the blocks left out, with the reason."""

    questions: list[MmluQuestion]
    skipped: list[dict] = field(default_factory=list)


def parse_block(subject: str, block: str) -> MmluQuestion | str:
    """One ``Q: ... A: ...`` block as a question, or the reason it does not parse."""
    if "\nA:" not in block:
        return "no 'A:' line"
    body, answer = block.split("\nA:", 1)
    lines = [line for line in body.strip().splitlines() if line.strip()]
    option_at = max((n for n, line in enumerate(lines) if line.lstrip().startswith("(A)")), default=None)
    if option_at is None or option_at == 0:
        return "no options line after a question"
    options_text = " ".join(line.strip() for line in lines[option_at:])
    options = _OPTION.findall(options_text)
    if [letter for letter, _ in options] != ["A", "B", "C", "D"] or not all(text for _, text in options):
        return "options are not (A)-(D), each with a text"
    gold = _ANSWER.search(answer.strip())
    if gold is None:
        return "no final 'The answer is (X)'"
    question = "\n".join(line.strip() for line in lines[:option_at])
    return MmluQuestion(subject, question, tuple(text for _, text in options), gold.group(1))


def mmlu_questions(cache: Path | str | None = None) -> MmluQuestions:
    """Every parseable question of lm-eval's MMLU chain-of-thought prompts, subjects in file order."""
    try:
        prompts = json.loads(read_wheel_member("lm_eval", MMLU_MEMBER, cache))
    except json.JSONDecodeError as error:
        raise OfflineDataError(f"{MMLU_MEMBER}: not valid JSON ({error.msg})") from None
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise OfflineDataError(f"{MMLU_MEMBER}: expected an object of subject -> prompt text")
    result = MmluQuestions([])
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for subject, prompt in prompts.items():
        for number, block in enumerate(re.split(r"(?:^|\n\n)Q: ", prompt)[1:], start=1):
            parsed = parse_block(subject, block)
            if isinstance(parsed, str):
                result.skipped.append({"subject": subject, "block": number, "reason": parsed})
            elif (parsed.question, parsed.options) not in seen:
                seen.add((parsed.question, parsed.options))
                result.questions.append(parsed)
    if not result.questions:
        raise OfflineDataError(f"{MMLU_MEMBER}: no question parsed")
    return result
