"""The teacher's few-shot chain-of-thought prompt, and its exemplars.

For each question the teacher sees an instruction to think step by step and to finish with the answer
phrase (``Therefore, the answer is`` by default, CasCoD's), then up to ``shots`` worked exemplars of the
same task (from a records file, the synthetic generator or the shipped ``bbh-cot`` rationales), then
the question: as chat turns for ``/v1/chat/completions`` (:func:`build_messages`) or as one text for
``/v1/completions`` (:func:`build_prompt`, stopped at the next ``Q:`` by :data:`COMPLETION_STOP`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...records import RationaleRecord, load_jsonl
from ..questions import Question

COMPLETION_STOP = ["\n\nQ:", "\nQ: "]


def _question_text(question: Question | RationaleRecord) -> str:
    text = question.question
    if question.choices and "(A)" not in text:
        text += "\nOptions:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(question.choices))
    return text


def _instruction(phrase: str) -> str:
    return f'Answer the question. Think step by step, then finish with "{phrase} <answer>."'


def build_messages(question: Question, shots: Sequence[RationaleRecord], answer_phrase: str) -> list[dict[str, str]]:
    """Chat prompt: instruction (and task description) in the first user turn, then one user/assistant
    pair per exemplar, then the question."""
    head = (f"{question.description}\n" if question.description else "") + _instruction(answer_phrase) + "\n\n"
    messages: list[dict[str, str]] = []
    for shot in shots:
        messages.append({"role": "user", "content": ("" if messages else head) + f"Q: {_question_text(shot)}"})
        messages.append({"role": "assistant", "content": f"{shot.rationale}\n{answer_phrase} {shot.answer}."})
    messages.append({"role": "user", "content": ("" if messages else head) + f"Q: {_question_text(question)}"})
    return messages


def build_prompt(question: Question, shots: Sequence[RationaleRecord], answer_phrase: str) -> str:
    """Completion prompt: ``Q: ...\\nA: Let's think step by step.\\n{r}\\n{phrase} {a}.`` per exemplar,
    then the question and ``A: Let's think step by step.``."""
    head = (f"{question.description}\n\n" if question.description else "") + _instruction(answer_phrase) + "\n\n"
    body = "".join(
        f"Q: {_question_text(s)}\nA: Let's think step by step.\n{s.rationale}\n{answer_phrase} {s.answer}.\n\n" for s in shots
    )
    return f"{head}{body}Q: {_question_text(question)}\nA: Let's think step by step.\n"


def load_fewshot(spec: str | None) -> dict[str, list[RationaleRecord]]:
    """Exemplars per task from ``none``, ``synthetic`` (seed 9999, apart from question sets), ``bbh-cot``
    (the shipped training split, correct rows) or a records JSONL file."""
    if spec in (None, "", "none"):
        return {}
    if spec == "synthetic":
        from ..synthetic import FAMILIES, generate

        records = [r for family in FAMILIES for r in generate(family, 5, seed=9999)]
    elif spec == "bbh-cot":
        from ..bbh_cot import load_bbh_cot

        records = load_bbh_cot("train")
    else:
        records = load_jsonl(spec)
    table: dict[str, list[RationaleRecord]] = {}
    for record in records:
        table.setdefault(record.task, []).append(record)
    return table


def shots_for(question: Question, fewshot: Mapping[str, list[RationaleRecord]], count: int) -> list[RationaleRecord]:
    """The first ``count`` exemplars of the question's task, never the question itself."""
    pool = [r for r in fewshot.get(question.task, []) if r.id != question.id and r.question != question.question]
    return pool[:count]
