"""A synthetic stand-in for the ``bigbench==1.0.0`` sdist, for tests on machines that cannot fetch the real one.

PyPI stopped serving ``bigbench-1.0.0.tar.gz`` (checked 2026-12-06: the index lists only 0.0.1, which holds no task
data), so a fresh machine cannot build the offline BIG-bench tasks. :func:`write_archive` writes a ``.tar.gz`` with the
sdist's layout (``bigbench-1.0.0/bigbench/benchmark_tasks/<task>[/<subtask>]/task.json``) holding every task this
project reads (``strategyqa``, the BBH tasks of :data:`~trl_safedistill.evaluation.items.BBH_SUBTASKS`, the BB-sub
tasks of :data:`~trl_safedistill.evaluation.items.BBSUB_TASKS`), each with generated examples of the real field
structure (``input``, ``target_scores`` and/or ``target``, task-level ``description``). The texts are made of
pseudo-words, so no two are near-duplicates and none reads as a real question: the archive exercises the code that
reads, splits and renders BIG-bench tasks, never a claim about the real data. ``tests/conftest.py`` uses it only when
the real archive cannot be had, in a test-only cache, and says so in pytest's header; tests of the real content skip.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"
SYLLABLES = ("ka", "lo", "mi", "ren", "tu", "vos", "bar", "qui", "zel", "dor", "fen", "gal", "hix", "jun", "nep",
             "pra", "sil", "tor", "ulm", "wex", "yab", "cro", "dri", "eph", "gor", "ist", "mav", "obi", "sna", "tev")
#: BIG-bench tasks whose answers are free text in BBH (``target``, no options).
FREE_FORM = ("dyck_languages", "object_counting", "word_sorting")
#: Two-word option sets of BBH tasks that answer with the word itself.
WORD_OPTIONS = {"causal_judgment": ("Yes", "No"), "navigate": ("Yes", "No"), "sports_understanding": ("plausible",
                "implausible"), "formal_fallacies_syllogisms_negation": ("valid", "invalid")}
TEMPLATES = ("Could a {0} {1} the {2} of {3}?", "Is the {0} of {1} older than any {2} {3}?",
             "Would a {0} fit inside the {1} {2} during {3}?", "Did {0} {1} ever visit the {2} near {3}?",
             "Can you find a {0} {1} in every {2} of {3}?", "Does the {0} {1} outnumber the {2} in {3}?")


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def _phrase(rng: random.Random, words: int) -> str:
    return " ".join(_word(rng) for _ in range(words))


def _strategyqa(rng: random.Random, count: int) -> dict:
    examples = []
    for _ in range(count):
        question = rng.choice(TEMPLATES).format(*(_phrase(rng, rng.randint(1, 2)) for _ in range(4)))
        yes = rng.random() < 0.5
        examples.append({"input": question, "target_scores": {"Yes": int(yes), "No": int(not yes)},
                         "target": f"{'Yes' if yes else 'No'}. {_phrase(rng, 8).capitalize()}."})
    return {"name": "strategyqa", "description": "Answer a yes/no question that needs several reasoning steps.",
            "keywords": ["synthetic"], "metrics": ["multiple_choice_grade"], "examples": examples}


def _multiple_choice(rng: random.Random, task: str, count: int, options: int) -> dict:
    examples = []
    for _ in range(count):
        fixed = WORD_OPTIONS.get(task)
        choices = list(fixed) if fixed else [_phrase(rng, rng.randint(1, 3)) for _ in range(options)]
        gold = rng.randrange(len(choices))
        examples.append({"input": f"{_phrase(rng, 12).capitalize()}. Which holds?",
                         "target_scores": {c: int(i == gold) for i, c in enumerate(choices)}})
    return {"name": task, "description": f"Synthetic stand-in for {task}.", "keywords": ["synthetic"],
            "metrics": ["multiple_choice_grade"], "examples": examples}


def _free_form(rng: random.Random, task: str, count: int) -> dict:
    examples = [{"input": f"{_phrase(rng, 10).capitalize()}.", "target": _phrase(rng, rng.randint(1, 4))}
                for _ in range(count)]
    return {"name": task, "description": f"Synthetic stand-in for {task}.", "keywords": ["synthetic"],
            "metrics": ["exact_str_match"], "examples": examples}


#: Examples of the real ``strategyqa`` task.json, kept so that the splits have their real sizes.
STRATEGYQA_EXAMPLES = 2290


def task_files(count: int = 300, seed: int = 0) -> dict[str, dict]:
    """``{task key: task.json content}`` for every task this project reads (subtasks as ``task/subtask``):
    ``strategyqa`` with as many examples as the real one, every other task with ``count``."""
    from trl_safedistill.evaluation.items import BBH_SUBTASKS, BBSUB_TASKS

    rng = random.Random(seed)
    files = {"strategyqa": _strategyqa(rng, STRATEGYQA_EXAMPLES)}
    for key in sorted({k for k in BBH_SUBTASKS.values() if k}) + sorted(BBSUB_TASKS):
        top = key.split("/")[0]
        if top in FREE_FORM:
            files[key] = _free_form(rng, top, count)
        else:
            options = {"three_objects": 3, "five_objects": 5, "seven_objects": 7}.get(key.partition("/")[2], 4)
            files[key] = _multiple_choice(rng, top, count, options)
    return files


def write_members(path: Path, members: dict[str, dict]) -> Path:
    """Write a ``.tar.gz`` at ``path`` holding each ``{member path: JSON content}``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            data = json.dumps(content).encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def write_archive(path: Path, count: int = 300, seed: int = 0) -> Path:
    """Write the synthetic sdist to ``path`` (``.tar.gz``) and return it."""
    return write_members(path, {f"{PREFIX}{key}/task.json": content for key, content in task_files(count, seed).items()})
