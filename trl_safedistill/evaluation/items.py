"""Evaluation documents: bbh-cot held-out items (IND), MMLU questions (OOD), and the safety prompt documents.

A document is a plain dict (JSON-serialisable, the row of an lm-eval dataset):

``id``, ``task``, ``question`` (options included), ``description`` (one line or ``None``), ``options``
(choice texts or ``None``), ``labels`` (``["(A)", ...]`` when options are lettered, else ``None``),
``golds`` (accepted answers: a label, an option text, or free text), ``gold_index`` (index into
``options``, ``-1`` for free-form items) and ``prompt_style`` (``format``: rendered in the student's
training format; ``plain``: the raw prompt as one chat turn, used for safety prompts).

* IND (:func:`ind_documents`): the held-out items of the shipped bbh-cot data (14 BBH tasks, Suzgun et al. 2022,
  :func:`trl_safedistill.data.bbh_cot.is_heldout`), the tasks the students are distilled on, never their training
  rows; gold = the item's ``target``.
* OOD (:func:`mmlu_documents`): MMLU questions from lm-eval's chain-of-thought prompts
  (:func:`trl_safedistill.data.offline.mmlu_questions`), rendered BBH-style (``Options:`` with ``(A)`` letters).

Until 2026-12 both suites were rendered from BIG-bench json tasks (27 BBH subtasks, 10 BB-sub tasks); PyPI no
longer serves that archive, so the suites moved to sources every machine can fetch.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from ..data import bbh_cot, offline

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
OPTION_LINE = re.compile(r"^\(([A-Z])\)\s*(.*)$")
#: Two-word answer sets of bbh-cot targets; the positive word is listed first.
WORD_SETS = ({"Yes", "No"}, {"True", "False"}, {"valid", "invalid"})


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def bbh_document(row: dict[str, Any]) -> dict[str, Any]:
    """A suite document from one bbh-cot row, gold = ``target``: lettered options (``(A) ...`` lines after
    ``Options:``), ``- word`` options, or a two-word answer set (Yes/No, True/False, valid/invalid) get ``options``;
    any other target is free-form (``gold_index`` -1)."""
    question, target = row["question"], row["target"].strip()
    doc = {"id": f"bbhcot-{row['id']}", "task": row["task"], "question": question, "description": row.get("description"),
           "options": None, "labels": None, "golds": [target], "gold_index": -1, "prompt_style": "format"}
    if "\nOptions:\n" in question:
        lines = question.split("\nOptions:\n", 1)[1].splitlines()
        parsed = [OPTION_LINE.match(line.strip()) for line in lines]
        if parsed and all(parsed):
            labels = [f"({m.group(1)})" for m in parsed]
            options = [m.group(2).strip() for m in parsed]
            if target in labels:
                index = labels.index(target)
                doc.update(options=options, labels=labels, gold_index=index, golds=[target, options[index]])
                return doc
        words = [line.strip()[2:].strip() for line in lines if line.strip().startswith("- ")]
        if words and target in words:
            doc.update(options=words, gold_index=words.index(target))
            return doc
    for word_set in WORD_SETS:
        if target in word_set:
            options = sorted(word_set, key=lambda w: w not in ("Yes", "True", "valid"))
            doc.update(options=options, gold_index=options.index(target))
            return doc
    return doc


def interleave_by_task(items: list, task_of=lambda item: item["task"]) -> list:
    """Round-robin over tasks (tasks in sorted order, items in their order): any prefix covers every task."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(task_of(item), []).append(item)
    ordered = [groups[t] for t in sorted(groups)]
    mixed = []
    for position in range(max((len(g) for g in ordered), default=0)):
        mixed.extend(g[position] for g in ordered if position < len(g))
    return mixed


def ind_documents() -> tuple[list[dict], list[dict]]:
    """(all bbh-cot held-out documents, the multiple-choice ones), interleaved by task, disjoint from training rows
    (an item whose question text also occurs in the training split is dropped; none on the shipped data)."""
    train_questions = {row["question"] for row in bbh_cot.split_rows("train")}
    rows = [row for row in bbh_cot.split_rows("heldout") if row["question"] not in train_questions]
    docs = interleave_by_task([bbh_document(row) for row in rows])
    return docs, [d for d in docs if d["options"]]


def mmlu_documents(cache=None) -> list[dict]:
    """Every parseable MMLU question as a multiple-choice document (task ``mmlu_<subject>``), interleaved by subject."""
    docs = []
    for q in offline.mmlu_questions(cache).questions:
        labels = [f"({letter})" for letter in LETTERS[: len(q.options)]]
        listing = "\n".join(f"{label} {text}" for label, text in zip(labels, q.options))
        subject = q.subject.replace("_", " ")
        docs.append(choice_document(f"mmlu-{q.subject}-{_sha(chr(10).join((q.question, *q.options)))[:12]}", f"mmlu_{q.subject}",
                                    f"{q.question}\nOptions:\n{listing}",
                                    f"The following is a multiple choice question about {subject}.", list(q.options),
                                    labels, labels.index(f"({q.gold})")))
    return interleave_by_task(docs)


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
