"""Build the offline task files (JSONL documents) that the ``eval_tasks/`` configs read.

Layout under ``<cache>/eval/`` (``cache`` = :func:`trl_safedistill.models.cache_dir` unless given)::

    safety/advbench.jsonl        AdvBench held-out part (safety_split role "eval"): evaluated
    safety/advbench_align.jsonl  AdvBench "align" part: for safety alignment only, never evaluated
    safety/harmbench.jsonl       HarmBench, all 200 standard behaviours (no alignment step uses them)
    safety/benign.jsonl          benign yes/no questions, "eval" part (over-refusal)
    safety/protocol/<source>_<part>.jsonl  protocol splits (data.offline.protocol_splits): sources advbench,
                                 harmbench, donotanswer, falseclaims, lookalike, imperative; parts align,
                                 calibration, test; near-duplicates removed across parts
    safety/protocol/wrapped_test.jsonl     test harmful prompts of AdvBench and HarmBench in a framing
    safety/protocol/near_duplicates.jsonl  every removed duplicate with the item it duplicates and the score
    ind/<bbh task>.jsonl         held-out items of the 14 bbh-cot tasks; ind/_mix.jsonl: 40 of each, interleaved
    ood/mmlu.jsonl               every parseable MMLU question (57 subjects); ood/_mix.jsonl: all of them, interleaved
    manifest.json                data version, sources, counts, the split rule

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
from .protocol import DATA_VERSION

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


def prepare_ind(cache: Path | str | None = None) -> dict[str, int]:
    """IND: the bbh-cot held-out items (:func:`.items.ind_documents`), one file per task plus ``_mix.jsonl``
    (at most :data:`.items.MIX_PER_TASK` of each task, interleaved)."""
    docs = items.ind_documents()[0]
    root = eval_dir(cache) / "ind"
    counts, groups = {}, []
    for task in sorted({d["task"] for d in docs}):
        group = [d for d in docs if d["task"] == task]
        counts[f"ind/{task}"] = _write(root / f"{task}.jsonl", group)
        groups.append(group)
    counts["ind/_mix"] = _write(root / "_mix.jsonl", items.interleave(groups))
    return counts


def prepare_ood(cache: Path | str | None = None) -> dict[str, int]:
    """OOD: every parseable MMLU question (:func:`.items.mmlu_documents`), one file, its mix the same items."""
    docs = items.mmlu_documents(cache)
    root = eval_dir(cache) / "ood"
    return {"ood/mmlu": _write(root / "mmlu.jsonl", docs), "ood/_mix": _write(root / "_mix.jsonl", docs)}


PREPARERS = {"safety": prepare_safety, "ind": prepare_ind, "ood": prepare_ood}


def prepare(suites: Iterable[str] = SUITES, cache: Path | str | None = None) -> dict:
    """Build the files of ``suites``; returns and writes the manifest (counts per file)."""
    suites = list(suites)
    unknown = sorted(set(suites) - set(PREPARERS))
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {list(SUITES)}")
    manifest_path = eval_dir(cache) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"files": {}}
    if manifest.get("data_version") != DATA_VERSION:  # files of another data version are not this one's
        manifest = {"files": {}}
    manifest["data_version"] = DATA_VERSION
    for suite in suites:
        manifest["files"].update(PREPARERS[suite](cache))
    manifest["sources"] = {name: offline.SOURCES[name].spec for name in offline.SUITE_SOURCES}
    manifest["sources"]["bbh-cot"] = "trl_safedistill/resources/bbh_cot (code-davinci-002 CoT, MIT)"
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


def data_version(cache: Path | str | None = None) -> int | None:
    """The data version the prepared files were built with (``manifest.json``; 1 when it predates the field, 0 when it
    cannot be read), ``None`` when none were built."""
    path = eval_dir(cache) / "manifest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text()).get("data_version", 1)
    except (json.JSONDecodeError, AttributeError):
        return 0


def task_file(relative: str, cache: Path | str | None = None) -> Path:
    """The prepared file ``relative`` (``ind/_mix.jsonl``), building its suite first when it is missing. When the
    cache holds files of another data version (:data:`~.protocol.DATA_VERSION`), every suite is rebuilt first, so
    no run reads a stale file under a current name."""
    path = eval_dir(cache) / relative
    suite = relative.split("/")[0]
    if data_version(cache) not in (None, DATA_VERSION):
        prepare(SUITES, cache)
    if not path.exists():
        if suite not in PREPARERS:
            raise FileNotFoundError(f"{path}: not a prepared evaluation file (suite '{suite}' unknown)")
        prepare([suite], cache)
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
