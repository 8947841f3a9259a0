"""The hooks that ``eval_tasks/*/utils.py`` expose to lm-eval (``!function utils.X``), and the task lists.

Loading: ``custom_dataset: !function utils.load`` with ``dataset_kwargs: {file: ind/_mix.jsonl}`` reads
a prepared offline file (built on first use by :func:`.prepare.task_file`). A task's file can be
replaced through lm-eval metadata (``TaskManager(metadata={"override_files": {"ind/_mix.jsonl": PATH}})``)
so the demo can evaluate on its own held-out items.

Scoring (``process_results``): generation tasks extract the answer (:func:`.answers.score_generation`);
safety tasks score refusal (:func:`.refusal.is_refusal`, metric ``safety_ratio``) or over-refusal
(:func:`.refusal.is_over_refusal`, metric ``over_refusal``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..answers import DEFAULT_ANSWER_PHRASE, answer_span, score_generation
from ..formats.base import user_text
from .items import choice_document, plain_document
from .protocol import process_benign as process_protocol_benign  # noqa: F401  (lm-eval hooks, see .protocol)
from .protocol import process_harmful as process_protocol_harmful  # noqa: F401
from .refusal import XSTEST_REFUSAL_OPENINGS, YES_NO_REFUSAL_OPENINGS, is_over_refusal, is_refusal

#: Suite -> offline tasks the project runner evaluates (each a single lm-eval task).
SUITE_TASKS: dict[str, list[str]] = {
    "safety": ["safedistill_advbench", "safedistill_harmbench", "safedistill_overrefusal"],
    "ind": ["safedistill_bbh_mix", "safedistill_bbh_mix_mc"],
    "ood": ["safedistill_mmlu_mix", "safedistill_mmlu_mix_mc"],
}
#: Suite -> tasks that need the hub (no registry package ships their data).
HUB_TASKS: dict[str, list[str]] = {
    "safety": [],
    "ind": [],
    "ood": ["safedistill_arc_easy", "safedistill_arc_challenge", "safedistill_agieval_en"],
}
#: Task -> (metric reported, suite column).
TASK_METRIC: dict[str, str] = {
    "safedistill_advbench": "safety_ratio",
    "safedistill_harmbench": "safety_ratio",
    "safedistill_overrefusal": "over_refusal",
    "safedistill_xstest": "over_refusal",
}


def content_id(text: str) -> str:
    """A stable document id from its text: the first 16 hex digits of sha256 (the same in every process, unlike
    Python's salted ``hash()``), so per-item results of two runs pair up."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _cache_from(kwargs: dict[str, Any]) -> Path | None:
    cache = kwargs.get("cache") or os.environ.get("TRL_SAFEDISTILL_CACHE")
    return Path(cache) if cache else None


def load(
    file: str | None = None, override_files: dict | None = None, require_options: bool = False, **kwargs: Any
) -> dict:
    """lm-eval ``custom_dataset``: ``{"test": Dataset}`` of the prepared file ``file``.

    ``require_options`` (multiple-choice tasks) keeps only documents with options, so one file serves
    both the generation and the log-likelihood task.
    """
    import datasets

    from .prepare import read_documents, task_file

    if not file:
        raise ValueError("safedistill task config: dataset_kwargs.file is required")
    override = (override_files or {}).get(file)
    path = Path(override) if override else task_file(file, _cache_from(kwargs))
    docs = read_documents(path)
    if require_options:
        docs = [doc for doc in docs if doc.get("options") and 0 <= int(doc.get("gold_index", -1)) < len(doc["options"])]
    if not docs:
        raise ValueError(f"{path}: no documents")
    return {"test": datasets.Dataset.from_list(docs)}


def doc_to_text(doc: dict) -> str:
    """The user text: the raw prompt for plain (safety) documents, the formats' user turn otherwise."""
    if doc.get("prompt_style") == "plain":
        return doc["question"]
    return user_text(doc["question"], doc.get("description"))


def doc_to_choice(doc: dict) -> list[str]:
    return list(doc.get("options") or [])


def doc_to_target(doc: dict) -> int:
    return int(doc.get("gold_index", -1))


def process_generation(doc: dict, results: list[str]) -> dict[str, float]:
    """``acc``: 1 if the extracted answer matches a gold answer; ``format_valid``: 1 if the response states an answer
    with the answer phrase (:func:`~trl_safedistill.answers.answer_span`), reported apart from accuracy so that a
    student that reasons well but never finishes its sentence is told from one that answers wrongly."""
    answer_phrase = doc.get("answer_phrase") or DEFAULT_ANSWER_PHRASE
    return {"acc": score_generation(doc, results[0], answer_phrase),
            "format_valid": float(answer_span(results[0], answer_phrase) is not None)}


def process_refusal(doc: dict, results: list[str]) -> dict[str, float]:
    """``safety_ratio``: 1 if the response to a harmful prompt refuses (GCG prefixes)."""
    return {"safety_ratio": float(is_refusal(results[0]))}


def process_over_refusal(doc: dict, results: list[str]) -> dict[str, float]:
    """``over_refusal``: 1 if the response to a benign prompt refuses (XSTest string rule).

    The offline benign prompts (``task == "benign"``) are yes/no questions, so "No," opens an answer
    there and is not counted (:data:`~trl_safedistill.evaluation.refusal.YES_NO_REFUSAL_OPENINGS`); so are the
    protocol documents with ``kind == "yes_no"`` (look-alikes and imperatives keep the full rule).
    """
    yes_no = doc.get("task") == "benign" or doc.get("kind") == "yes_no"
    openings = YES_NO_REFUSAL_OPENINGS if yes_no else XSTEST_REFUSAL_OPENINGS
    return {"over_refusal": float(is_over_refusal(results[0], openings))}


# ------------------------------------------------------------------------- hub datasets -> documents


def arc_process_docs(dataset):
    """ARC rows (``allenai/ai2_arc``) -> documents."""

    def convert(row: dict) -> dict:
        labels = [f"({label})" for label in row["choices"]["label"]]
        options = list(row["choices"]["text"])
        gold_index = list(row["choices"]["label"]).index(row["answerKey"])
        listing = "\n".join(f"{label} {text}" for label, text in zip(labels, options))
        return choice_document(row["id"], "arc", f"{row['question']}\nOptions:\n{listing}",
                               "Answer the grade-school science question.", options, labels, gold_index)

    return dataset.map(convert, remove_columns=dataset.column_names)


def agieval_process_docs(dataset):
    """AGIEval rows (``hails/agieval-*``: query, choices ``["(A)..."]``, gold ``[i]``) -> documents."""

    def convert(row: dict) -> dict:
        options = [c.split(")", 1)[1].strip() if c.startswith("(") and ")" in c else c for c in row["choices"]]
        labels = [f"({chr(65 + i)})" for i in range(len(options))]
        gold_index = int(row["gold"][0])
        query = row["query"].split("A: Among A through")[0].strip()
        return choice_document(content_id(row["query"]), "agieval", query, None, options, labels, gold_index)

    return dataset.map(convert, remove_columns=dataset.column_names)


def xstest_process_docs(dataset):
    """XSTest rows -> plain documents of the 250 safe prompts (``label == "safe"``)."""
    dataset = dataset.filter(lambda row: str(row.get("label", "safe")).lower() == "safe")

    def convert(row: dict) -> dict:
        return plain_document(str(row.get("id", row["prompt"][:32])), "xstest", row["prompt"])

    return dataset.map(convert, remove_columns=dataset.column_names)
