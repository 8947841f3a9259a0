"""Evaluation documents: BIG-bench examples rendered BBH-style, and the safety prompt documents.

A document is a plain dict (JSON-serialisable, the row of an lm-eval dataset):

``id``, ``task``, ``question`` (options included), ``description`` (one line or ``None``), ``options``
(choice texts or ``None``), ``labels`` (``["(A)", ...]`` when options are lettered, else ``None``),
``golds`` (accepted answers: a label, an option text, or free text), ``gold_index`` (index into
``options``, ``-1`` for free-form items) and ``prompt_style`` (``format``: rendered in the student's
training format; ``plain``: the raw prompt as one chat turn, used for safety prompts).

BBH (Suzgun et al. 2022) is a fixed subset of BIG-bench: 27 subtasks, 250 items each. Offline, 24 come
from the json tasks of the ``bigbench==1.0.0`` sdist, rendered as BBH renders them (``Options:`` with
``(A)`` letters, or ``- Yes`` / ``- No`` style for two-word answer sets) and sampled as the first 250
items in sha256 order of their input (BBH's own sample is not in the sdist: this project's choice).
``boolean_expressions``, ``multistep_arithmetic_two`` and ``web_of_lies`` are programmatic tasks in
BIG-bench (no task.json), so they are generated here in BBH's surface form with a fixed seed and
checked by evaluating them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable

from ..data import offline

ITEMS_PER_TASK = 250

#: BBH subtask -> BIG-bench json task key (``None``: generated here).
BBH_SUBTASKS: dict[str, str | None] = {
    "boolean_expressions": None,
    "causal_judgement": "causal_judgment",
    "date_understanding": "date_understanding",
    "disambiguation_qa": "disambiguation_qa",
    "dyck_languages": "dyck_languages",
    "formal_fallacies": "formal_fallacies_syllogisms_negation",
    "geometric_shapes": "geometric_shapes",
    "hyperbaton": "hyperbaton",
    "logical_deduction_five_objects": "logical_deduction/five_objects",
    "logical_deduction_seven_objects": "logical_deduction/seven_objects",
    "logical_deduction_three_objects": "logical_deduction/three_objects",
    "movie_recommendation": "movie_recommendation",
    "multistep_arithmetic_two": None,
    "navigate": "navigate",
    "object_counting": "object_counting",
    "penguins_in_a_table": "penguins_in_a_table",
    "reasoning_about_colored_objects": "reasoning_about_colored_objects",
    "ruin_names": "ruin_names",
    "salient_translation_error_detection": "salient_translation_error_detection",
    "snarks": "snarks",
    "sports_understanding": "sports_understanding",
    "temporal_sequences": "temporal_sequences",
    "tracking_shuffled_objects_five_objects": "tracking_shuffled_objects/five_objects",
    "tracking_shuffled_objects_seven_objects": "tracking_shuffled_objects/seven_objects",
    "tracking_shuffled_objects_three_objects": "tracking_shuffled_objects/three_objects",
    "web_of_lies": None,
    "word_sorting": "word_sorting",
}

#: BB-sub (OOD): multiple-choice BIG-bench json tasks outside BBH (this project's documented list).
BBSUB_TASKS: tuple[str, ...] = (
    "anachronisms",
    "analogical_similarity",
    "code_line_description",
    "epistemic_reasoning",
    "implicatures",
    "known_unknowns",
    "logical_args",
    "logic_grid_puzzle",
    "physical_intuition",
    "riddle_sense",
)

#: Two-word answer sets that BBH lists as ``- word`` options and answers with the word itself.
WORD_OPTION_SETS: tuple[frozenset[str], ...] = (
    frozenset({"yes", "no"}),
    frozenset({"true", "false"}),
    frozenset({"valid", "invalid"}),
    frozenset({"plausible", "implausible"}),
)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _question_text(example: dict) -> str:
    meta = example.get("_meta", {})
    parts = [str(meta.get("task_prefix") or "").strip(), str(example.get("input") or "").strip()]
    output_prefix = str(meta.get("example_output_prefix") or "").strip()
    if "?" in output_prefix:
        parts.append(output_prefix)
    return "\n".join(p for p in parts if p)


def document_from_example(example: dict, task: str, index: int, description: str | None) -> dict | None:
    """One BBH-style document from a BIG-bench example; ``None`` when it has no usable target."""
    question = _question_text(example)
    if not question:
        return None
    scores = example.get("target_scores")
    doc = {
        "id": f"{task}-{_sha(question)[:12]}",
        "task": task,
        "description": description,
        "options": None,
        "labels": None,
        "gold_index": -1,
        "prompt_style": "format",
    }
    if isinstance(scores, dict) and scores:
        options = [str(option).strip() for option in scores]
        best = max(scores.values())
        gold_index = next(i for i, value in enumerate(scores.values()) if value == best)
        if len(options) > len(LETTERS):  # too many to list (dyck_languages): free-form, as BBH asks it
            doc.update(question=question, golds=[options[gold_index]])
            return doc
        if frozenset(o.lower() for o in options) in WORD_OPTION_SETS:
            listing = "\n".join(f"- {o}" for o in options)
            labels, golds = None, [options[gold_index]]
        else:
            labels = [f"({LETTERS[i]})" for i in range(len(options))]
            listing = "\n".join(f"{label} {o}" for label, o in zip(labels, options))
            golds = [labels[gold_index], options[gold_index]]
        doc.update(question=f"{question}\nOptions:\n{listing}", options=options, labels=labels, golds=golds)
        doc["gold_index"] = gold_index
        return doc
    target = example.get("target")
    golds = [target] if isinstance(target, str) else [t for t in (target or []) if isinstance(t, str)]
    if not golds:
        return None
    doc.update(question=question, golds=[g.strip() for g in golds])
    return doc


def _sample(docs: Iterable[dict], count: int) -> list[dict]:
    unique = {doc["id"]: doc for doc in docs}
    return [unique[key] for key in sorted(unique, key=_sha)][:count]


def bigbench_documents(key: str, task: str, cache=None, count: int = ITEMS_PER_TASK) -> list[dict]:
    """Documents of BIG-bench task/subtask ``key`` (e.g. ``logical_deduction/three_objects``) named ``task``."""
    top = key.split("/")[0]
    examples = [e for e in offline.bigbench_task_examples(top, cache) if "/" not in key or e["_subtask"] == key]
    if not examples:
        raise offline.OfflineDataError(f"bigbench task '{key}' has no examples")
    description = str(examples[0]["_meta"].get("description") or "").strip() or None
    docs = (document_from_example(e, task, i, description) for i, e in enumerate(examples))
    return _sample((d for d in docs if d is not None), count)


# ---------------------------------------------------------------------- generated BBH subtasks


def _boolean_expression(rng: random.Random) -> str:
    def operand(depth: int) -> str:
        if depth == 0 or rng.random() < 0.5:
            text = rng.choice(["True", "False"])
        else:
            text = f"( {expression(depth - 1)} )"
        return "not " * rng.choice([0, 0, 1, 2]) + text

    def expression(depth: int) -> str:
        parts = [operand(depth)]
        for _ in range(rng.choice([1, 2])):
            parts += [rng.choice(["and", "or"]), operand(depth)]
        return " ".join(parts)

    return expression(1)


def generated_documents(task: str, count: int = ITEMS_PER_TASK, seed: int = 1234) -> list[dict]:
    """BBH's programmatic subtasks, in BBH's surface form, generated with a fixed seed and self-checked."""
    rng = random.Random(f"{seed}-{task}")
    docs: dict[str, dict] = {}
    names = ["Fidel", "Jerry", "Vina", "Millicent", "Raymond", "Ka", "Sherrie", "Jim", "Tamika", "Alejandro"]
    while len(docs) < count:
        if task == "boolean_expressions":
            expression = _boolean_expression(rng)
            value = eval(expression)  # noqa: S307 - our own grammar of True/False/not/and/or/()
            question, golds, options = f"{expression} is", [str(value)], ["True", "False"]
            description = "Evaluate the result of a random Boolean expression."
        elif task == "multistep_arithmetic_two":
            groups = []
            for _ in range(2):
                numbers = [rng.randint(-9, 9) for _ in range(4)]
                ops = [rng.choice(["+", "-", "*"]) for _ in range(3)]
                groups.append(" ".join(f"{n}" if i == 0 else f"{ops[i - 1]} {n}" for i, n in enumerate(numbers)))
            outer = rng.choice(["+", "-", "*"])
            expression = f"(({groups[0]}) {outer} ({groups[1]}))"
            question, golds, options = f"{expression} =", [str(eval(expression))], None  # noqa: S307
            description = "Solve multi-step arithmetic problems."
        elif task == "web_of_lies":
            people = rng.sample(names, 5)
            truthful = rng.choice([True, False])
            sentences = [f"{people[0]} {'tells the truth' if truthful else 'lies'}."]
            for previous, person in zip(people, people[1:]):
                says_truth = rng.choice([True, False])
                sentences.append(f"{person} says {previous} {'tells the truth' if says_truth else 'lies'}.")
                truthful = says_truth == truthful
            question = f"Question: {' '.join(sentences)} Does {people[-1]} tell the truth?"
            golds, options = ["Yes" if truthful else "No"], ["Yes", "No"]
            description = "Evaluate a random boolean function expressed as a word problem."
        else:
            raise ValueError(f"no generator for BBH subtask '{task}'")
        doc_id = f"{task}-{_sha(question)[:12]}"
        docs.setdefault(
            doc_id,
            {
                "id": doc_id,
                "task": task,
                "question": question,
                "description": description,
                "options": options,
                "labels": None,
                "golds": golds,
                "gold_index": options.index(golds[0]) if options else -1,
                "prompt_style": "format",
            },
        )
    return list(docs.values())


def bbh_documents(subtask: str, cache=None, count: int = ITEMS_PER_TASK) -> list[dict]:
    """The documents of one BBH subtask (offline)."""
    if subtask not in BBH_SUBTASKS:
        raise ValueError(f"unknown BBH subtask '{subtask}'; choose one of {sorted(BBH_SUBTASKS)}")
    key = BBH_SUBTASKS[subtask]
    return generated_documents(subtask, count) if key is None else bigbench_documents(key, subtask, cache, count)


def bbsub_documents(task: str, cache=None, count: int = ITEMS_PER_TASK) -> list[dict]:
    """The multiple-choice documents of one BB-sub task (items without options dropped)."""
    return [d for d in bigbench_documents(task, task, cache, count * 2) if d["options"]][:count]


MIX_PER_TASK = 40


def interleave(groups: Iterable[list[dict]], per_group: int = MIX_PER_TASK) -> list[dict]:
    """Round-robin over groups (at most ``per_group`` from each): the first ``n`` items cover every group evenly."""
    groups = [list(g)[:per_group] for g in groups]
    mixed: list[dict] = []
    for position in range(max((len(g) for g in groups), default=0)):
        mixed.extend(g[position] for g in groups if position < len(g))
    return mixed


def plain_document(doc_id: str, task: str, question: str) -> dict:
    """A plain-chat document (a safety prompt: no options, no gold; the student's format is not applied)."""
    return {"id": doc_id, "task": task, "question": question, "description": None, "options": None, "labels": None,
            "golds": [], "gold_index": -1, "prompt_style": "plain"}


def choice_document(doc_id: str, task: str, question: str, description: str | None, options: list[str],
                    labels: list[str], gold_index: int) -> dict:
    """A multiple-choice document in the student's format; the gold answer is accepted as letter or text."""
    return {"id": doc_id, "task": task, "question": question, "description": description, "options": options,
            "labels": labels, "golds": [labels[gold_index], options[gold_index]], "gold_index": gold_index,
            "prompt_style": "format"}


def safety_documents(prompts: Iterable[str], task: str) -> list[dict]:
    """Plain-chat documents for harmful or benign prompts."""
    return [plain_document(f"{task}-{_sha(p)[:12]}", task, p) for p in prompts]


def protocol_documents(split_items: Iterable, task: str) -> list[dict]:
    """Plain-chat documents of protocol-split items (:class:`~trl_safedistill.data.offline.SplitItem`).

    The :func:`safety_documents` layout plus ``source``, ``part``, ``kind`` (``harmful``, ``wrapped``,
    ``look_alike``, ``imperative``, ``yes_no``: reports split by it, and over-refusal applies the yes/no-aware
    rule where ``kind == "yes_no"``), ``template`` (generated and wrapped items, else ``None``), ``category``
    (Do-Not-Answer risk area, else ``None``) and ``base_prompt`` (wrapped items, else ``None``).
    """
    docs = []
    for item in split_items:
        doc = safety_documents([item.text], task)[0]
        doc.update(
            source=item.source,
            part=item.part,
            kind=item.kind,
            template=item.meta.get("template"),
            category=item.meta.get("category"),
            base_prompt=item.meta.get("base_prompt"),
        )
        docs.append(doc)
    return docs
