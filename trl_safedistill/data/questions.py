"""Question sets for ``trl-safedistill teach``: questions with gold answers, from files, the hub or BIG-bench.

A question set is a list of :class:`Question` (id, question, gold answer, task, options, description).
:func:`load_questions` takes one spec:

* ``path/to/questions.jsonl`` (or ``.jsonl.gz``, or ``.json`` with a top-level list): one object per
  question. Columns, first match wins: id ``id|idx|uid|question_id``; question
  ``question|input|prompt|query``; gold ``gold|target|answer|label`` (gold columns before ``answer``,
  so teacher-output files such as ``bbh-cot`` use their ``target``); task ``task|task_name|subset``;
  options ``choices|options``; description ``description|task_description``. A GSM8K-style gold
  (``... #### 72``) keeps the part after ``####``.
* ``hub:NAME[:CONFIG[:SPLIT]]``: a Hugging Face dataset (split ``test`` unless given), same columns.
* ``bigbench:TASK``: a BIG-bench task read from the ``bigbench==1.0.0`` sdist by
  :func:`trl_safedistill.data.offline.bigbench_task_examples` (imported lazily).
* ``synthetic:FAMILY[+FAMILY...][:N[:SEED]]``: generated problems
  (:mod:`trl_safedistill.data.synthetic`), ``all`` for every family.

A bad row raises :class:`~trl_safedistill.records.RecordError` naming the source, line and field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..records import RecordError, read_jsonl_rows

QUESTION_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("id", "idx", "uid", "question_id"),
    "question": ("question", "input", "prompt", "query"),
    "gold": ("gold", "target", "answer", "label"),
    "task": ("task", "task_name", "subset"),
    "choices": ("choices", "options"),
    "description": ("description", "task_description"),
}


@dataclass(frozen=True)
class Question:
    """One question to send to the teacher, with the gold answer the filter compares against."""

    id: str
    question: str
    gold: str
    task: str = "default"
    choices: tuple[str, ...] | None = None
    description: str | None = None


def _scalar_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, int, float)):
        return str(value[0])  # BIG-bench style single-target lists
    if isinstance(value, str):
        return value
    return None


def question_from_mapping(row: Any, *, source: str, line: int | None, default_task: str, index: int) -> Question:
    """Validate one row into a :class:`Question`; raise :class:`RecordError` naming the field."""
    if not isinstance(row, Mapping):
        raise RecordError(source, line, None, f"expected a JSON object, got {type(row).__name__}")

    def key_of(name: str) -> str | None:
        return next((c for c in QUESTION_COLUMNS[name] if c in row and row[c] is not None), None)

    values: dict[str, str | None] = {}
    for name in ("id", "question", "gold", "task", "description"):
        key = key_of(name)
        if key is None:
            values[name] = None
            continue
        text = _scalar_text(row[key])
        if text is None:
            raise RecordError(source, line, key, f"expected a string, got {type(row[key]).__name__}")
        values[name] = text
    question = (values["question"] or "").strip()
    if not question:
        raise RecordError(source, line, key_of("question") or "question", "missing or empty")
    gold = values["gold"]
    if gold is None:
        raise RecordError(source, line, "gold", f"missing: no gold answer column (one of {list(QUESTION_COLUMNS['gold'])})")
    if "\n#### " in gold:
        gold = gold.rsplit("\n#### ", 1)[1]
    gold = gold.strip()
    if not gold:
        raise RecordError(source, line, key_of("gold"), "gold answer is empty")
    choices = None
    choices_key = key_of("choices")
    if choices_key is not None:
        raw = row[choices_key]
        if not isinstance(raw, (list, tuple)) or not all(isinstance(c, str) for c in raw):
            raise RecordError(source, line, choices_key, "expected a list of strings")
        choices = tuple(raw)
    task = values["task"] or default_task
    return Question(
        id=values["id"] or f"{task}-{index}",
        question=question,
        gold=gold,
        task=task,
        choices=choices,
        description=values["description"],
    )


def questions_from_rows(rows: Iterable[tuple[int | None, Any]], *, source: str, default_task: str) -> list[Question]:
    """Validate ``(line, row)`` pairs; duplicate ids are an error (resumption keys on them)."""
    questions: list[Question] = []
    seen: dict[str, int | None] = {}
    for index, (line, row) in enumerate(rows):
        item = question_from_mapping(row, source=source, line=line, default_task=default_task, index=index)
        if item.id in seen:
            raise RecordError(source, line, "id", f"duplicate id '{item.id}' (first at line {seen[item.id]})")
        seen[item.id] = line
        questions.append(item)
    return questions


def _file_rows(path: Path) -> Iterable[tuple[int | None, Any]]:
    if path.suffix == ".json":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            line = raw.count(b"\n", 0, error.start) + 1
            raise RecordError(str(path), line, None, f"not valid UTF-8 (byte 0x{raw[error.start]:02x}): save the file as UTF-8") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise RecordError(str(path), error.lineno, None, f"not valid JSON ({error.msg})") from None
        if isinstance(data, Mapping):
            data = next((data[k] for k in ("examples", "questions", "data") if isinstance(data.get(k), list)), None)
        if not isinstance(data, list):
            raise RecordError(str(path), None, None, "expected a top-level list or an 'examples' list")
        return [(index + 1, row) for index, row in enumerate(data)]
    return read_jsonl_rows(path)


def load_questions(spec: str, *, limit: int | None = None, tasks: Iterable[str] | None = None) -> list[Question]:
    """Load a question set from a spec (see the module docstring); ``tasks`` keeps only those tasks."""
    if spec.startswith("synthetic:"):
        questions = _synthetic_questions(spec[len("synthetic:") :])
    elif spec.startswith("bigbench:"):
        questions = _bigbench_questions(spec[len("bigbench:") :])
    elif spec.startswith("hub:"):
        questions = _hub_questions(spec[len("hub:") :])
    else:
        path = Path(spec)
        if not path.exists():
            raise RecordError(spec, None, None, "question file not found (or use hub:/bigbench:/synthetic: specs)")
        questions = questions_from_rows(_file_rows(path), source=str(path), default_task=path.name.split(".")[0])
    if tasks is not None:
        wanted = set(tasks)
        questions = [q for q in questions if q.task in wanted]
    return questions[:limit] if limit is not None else questions


def _synthetic_questions(rest: str) -> list[Question]:
    from .synthetic import FAMILIES, generate

    parts = rest.split(":")
    names = list(FAMILIES) if parts[0] in ("", "all") else parts[0].split("+")
    count = int(parts[1]) if len(parts) > 1 and parts[1] else 10
    seed = int(parts[2]) if len(parts) > 2 and parts[2] else 0
    questions = []
    for name in names:
        for record in generate(name, count, seed=seed):
            questions.append(Question(record.id, record.question, record.answer, record.task, record.choices, record.description))
    return questions


def bigbench_question(example: Mapping[str, Any], task: str, index: int) -> Question:
    """One BIG-bench example as a question.

    Multiple choice (``target_scores`` and no ``target``): the options are listed as ``(A) ...`` under the input and the
    gold is the letter of the best-scored option, as BBH writes them. Free text (``target``, a string or
    a list of accepted strings; preferred when both exist): the first target is the gold.
    """
    source = f"bigbench:{task}"
    text = example.get("input")
    if not isinstance(text, str) or not text.strip():
        raise RecordError(source, index + 1, "input", "missing or empty")
    subtask = str(example.get("_subtask") or task)
    meta = example.get("_meta") if isinstance(example.get("_meta"), Mapping) else {}
    scores = example.get("target_scores")
    target = example.get("target")
    if isinstance(target, list) and target and isinstance(target[0], (str, int, float)):
        target = target[0]  # several accepted answers: the first is the gold
    choices = None
    if isinstance(scores, Mapping) and scores and _scalar_text(target) is None:
        choices = tuple(str(option) for option in scores)
        best = max(range(len(choices)), key=lambda i: float(scores[choices[i]]))
        gold = f"({chr(65 + best)})"
        text = text.rstrip() + "\nOptions:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    else:
        gold = _scalar_text(target)
        if gold is None or not gold.strip():
            raise RecordError(source, index + 1, "target", "missing: neither target_scores nor a target string")
    return Question(
        id=f"{subtask.replace('/', '.')}-{index}",
        question=text.strip(),
        gold=gold.strip(),
        task=subtask.replace("/", "_"),
        choices=choices,
        description=meta.get("description") if isinstance(meta.get("description"), str) else None,
    )


def _bigbench_questions(task: str) -> list[Question]:
    try:
        from .offline import bigbench_task_examples
    except ImportError as error:  # the reader lives in another module of this package
        raise RecordError(f"bigbench:{task}", None, None, f"BIG-bench reader unavailable: {error}") from None
    counters: dict[str, int] = {}
    questions = []
    for example in bigbench_task_examples(task):
        subtask = str(example.get("_subtask") or task)
        index = counters.get(subtask, 0)
        counters[subtask] = index + 1
        questions.append(bigbench_question(example, task, index))
    return questions


def _hub_questions(rest: str) -> list[Question]:
    from datasets import load_dataset

    parts = rest.split(":")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "test"
    dataset = load_dataset(name, config, split=split)
    task = name.split("/")[-1] + (f"_{config}" if config else "")
    return questions_from_rows(((i + 1, row) for i, row in enumerate(dataset)), source=f"hub:{rest}", default_task=task)
