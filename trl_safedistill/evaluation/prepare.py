"""Build the offline task files (JSONL documents) that the ``eval_tasks/`` configs read.

Layout under ``<cache>/eval/`` (``cache`` = :func:`trl_safedistill.models.cache_dir` unless given)::

    safety/advbench.jsonl        AdvBench held-out part (safety_split role "eval"): evaluated
    safety/advbench_align.jsonl  AdvBench "align" part: for safety alignment only, never evaluated
    safety/harmbench.jsonl       HarmBench, all 200 standard behaviours (no alignment step uses them)
    safety/benign.jsonl          benign questions, "eval" part (over-refusal)
    safety/benign_align.jsonl    benign questions, "align" part (helpful answers during alignment)
    safety/protocol/<source>_<part>.jsonl  protocol splits (data.offline.protocol_splits): sources advbench,
                                 harmbench, donotanswer, strategyqa, lookalike, imperative; parts align,
                                 calibration, test; near-duplicates removed across parts
    safety/protocol/wrapped_test.jsonl     test harmful prompts of AdvBench and HarmBench in a framing
    safety/protocol/near_duplicates.jsonl  every removed duplicate with the item it duplicates and the score
    ind/<bbh subtask>.jsonl      27 BBH subtasks;  ind/_mix.jsonl: 40 of each, interleaved round-robin
    ood/<bbsub task>.jsonl       BB-sub tasks;     ood/_mix.jsonl: 40 of each, interleaved
    manifest.json                sources, counts, the split rule

AGIEval and ARC are not built: no registry package ships them. Their tasks read the hub and are
skipped, with a message, when the hub cannot be reached (see :mod:`.hub`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ..atomic import write_jsonl
from ..data import offline
from . import items

SUITES: tuple[str, ...] = ("safety", "ind", "ood")
OFFLINE_UNAVAILABLE = {"ood": ["arc_easy", "arc_challenge", "agieval (English multiple-choice)"]}


def eval_dir(cache: Path | str | None = None) -> Path:
    return offline.cache_root(cache) / "eval"


def _write(path: Path, docs: list[dict]) -> int:
    return write_jsonl(path, docs)


def prepare_safety(cache: Path | str | None = None) -> dict[str, int]:
    goals = offline.advbench_goals(cache)
    benign = offline.benign_prompts(cache)
    root = eval_dir(cache) / "safety"
    files = {
        "advbench": items.safety_documents(offline.safety_split(goals, "eval"), "advbench"),
        "advbench_align": items.safety_documents(offline.safety_split(goals, "align"), "advbench_align"),
        "harmbench": items.safety_documents(offline.harmbench_behaviors(cache), "harmbench"),
        "benign": items.safety_documents(offline.safety_split(benign, "eval"), "benign"),
        "benign_align": items.safety_documents(offline.safety_split(benign, "align"), "benign_align"),
    }
    return {f"safety/{name}": _write(root / f"{name}.jsonl", docs) for name, docs in files.items()}


PROTOCOL_DIR = "safety/protocol"


def prepare_safety_protocol(cache: Path | str | None = None) -> tuple[dict[str, int], dict]:
    """Write the protocol splits (``align`` / ``calibration`` / ``test`` per source, wrapped test prompts, the
    removed near-duplicates) beside today's safety files, which stay as they are.

    Returns the counts per file and the protocol's manifest entry (rules, threshold, counts per source and part).
    """
    splits = offline.protocol_splits(cache)
    root = eval_dir(cache) / PROTOCOL_DIR
    counts = {}
    for source in offline.PROTOCOL_SOURCES:
        for part in offline.PARTS:
            name = f"{source}_{part}"
            docs = items.protocol_documents(splits.select(source, part), f"protocol_{name}")
            counts[f"{PROTOCOL_DIR}/{name}"] = _write(root / f"{name}.jsonl", docs)
    counts[f"{PROTOCOL_DIR}/wrapped_test"] = _write(  # in sha256 order of the base prompt
        root / "wrapped_test.jsonl", items.protocol_documents(splits.wrapped, "protocol_wrapped_test")
    )
    removals = [
        {
            "text": r.item.text, "source": r.item.source, "part": r.item.part, "reason": r.reason,
            "kept_text": r.kept.text, "kept_source": r.kept.source, "kept_part": r.kept.part, "score": round(r.score, 2),
        }
        for r in splits.dedup.removed
    ]  # fmt: skip
    counts[f"{PROTOCOL_DIR}/near_duplicates"] = _write(root / "near_duplicates.jsonl", removals)
    return counts, splits.manifest()


def _prepare_tasks(suite: str, tasks: Iterable[str], documents, cache: Path | str | None) -> dict[str, int]:
    """One file per task of ``suite`` (``documents(task, cache)``) plus ``_mix.jsonl``, the tasks interleaved."""
    root = eval_dir(cache) / suite
    counts, groups = {}, []
    for task in tasks:
        docs = documents(task, cache)
        counts[f"{suite}/{task}"] = _write(root / f"{task}.jsonl", docs)
        groups.append(docs)
    counts[f"{suite}/_mix"] = _write(root / "_mix.jsonl", items.interleave(groups))
    return counts


def prepare_ind(cache: Path | str | None = None) -> dict[str, int]:
    offline.ensure_bigbench_tasks({k.split("/")[0] for k in items.BBH_SUBTASKS.values() if k}, cache)
    return _prepare_tasks("ind", items.BBH_SUBTASKS, items.bbh_documents, cache)


def prepare_ood(cache: Path | str | None = None) -> dict[str, int]:
    offline.ensure_bigbench_tasks(items.BBSUB_TASKS, cache)
    return _prepare_tasks("ood", items.BBSUB_TASKS, items.bbsub_documents, cache)


PREPARERS = {"safety": prepare_safety, "ind": prepare_ind, "ood": prepare_ood}


def prepare(suites: Iterable[str] = SUITES, cache: Path | str | None = None) -> dict:
    """Build the files of ``suites``; returns and writes the manifest (counts per file)."""
    suites = list(suites)
    unknown = sorted(set(suites) - set(PREPARERS))
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {list(SUITES)}")
    if "safety" in suites or "ind" in suites or "ood" in suites:
        wanted = set()
        if "safety" in suites:
            wanted.add(offline.BENIGN_TASK)
        if "ind" in suites:
            wanted |= {k.split("/")[0] for k in items.BBH_SUBTASKS.values() if k}
        if "ood" in suites:
            wanted |= set(items.BBSUB_TASKS)
        offline.ensure_bigbench_tasks(wanted, cache)  # one pass over the sdist for all suites
    manifest_path = eval_dir(cache) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"files": {}}
    for suite in suites:
        manifest["files"].update(PREPARERS[suite](cache))
    manifest["sources"] = {name: source.spec for name, source in offline.SOURCES.items()}
    manifest["split_rule"] = (
        f"eval iff sha256(prompt utf-8)[0] < {offline.SAFETY_EVAL_CUT}, else align (trl_safedistill.data.offline.safety_split)"
    )
    manifest["offline_unavailable"] = OFFLINE_UNAVAILABLE
    if "safety" in suites:
        protocol_files, manifest["protocol"] = prepare_safety_protocol(cache)
        manifest["files"].update(protocol_files)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


def task_file(relative: str, cache: Path | str | None = None) -> Path:
    """The prepared file ``relative`` (``ind/_mix.jsonl``), building every suite first when it is missing."""
    path = eval_dir(cache) / relative
    if not path.exists():
        suite = relative.split("/")[0]
        if suite not in PREPARERS:
            raise FileNotFoundError(f"{path}: not a prepared evaluation file (suite '{suite}' unknown)")
        prepare(SUITES, cache)  # all suites: one pass over the BIG-bench sdist
        if not path.exists():
            raise FileNotFoundError(f"{path}: not produced by `trl-safedistill data prepare`")
    return path


def read_documents(path: Path) -> list[dict]:
    """Documents of one prepared file; a bad line raises naming the file and line."""
    docs = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            for field in ("id", "question", "golds", "prompt_style"):
                if field not in doc:
                    raise ValueError(f"{path}:{number}: field '{field}' missing")
            docs.append(doc)
    return docs
