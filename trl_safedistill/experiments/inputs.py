"""Stage 1: the demo's data, written into the run folder.

* training records: ``bbh-cot`` train split (correct teacher rationales; held-out ids never included), keeping
  only records whose ``standard`` rendering fits ``max_length`` tokens (long ones are left out, not cut, so no
  answer is truncated away); the same records, in the same order, for every method.
* IND capability: every ``bbh-cot`` held-out item (:func:`trl_safedistill.data.bbh_cot.is_heldout`), with its
  gold ``target``, split by a fixed hash into a **calibration** part (30%: the training curves, any choice of
  training length) and a **test** part (70%: read only by the final evaluation), :func:`capability_part`. Per part:
  ``ind_gen_<part>.jsonl`` (exact match after answer extraction), ``ind_mc_<part>.jsonl`` (the items with
  options: ``(A)``-style lists or the Yes/No, True/False sets; log-likelihood multiple choice) and
  ``heldout_records_<part>.jsonl`` (teacher rationales for the held-out NLL). Items are interleaved round-robin
  over tasks, so the first ``n`` cover every task. An item whose question text also occurs in the training split
  is dropped (none on the shipped data).
* OOD: the evaluation suite's MMLU mix (:func:`trl_safedistill.evaluation.items.mmlu_documents`, multiple-choice
  questions from the ``lm-eval`` wheel), when its archive can be fetched; otherwise (only then) the run says so.
  Any other error building it raises.
* safety: the protocol's task files (:mod:`trl_safedistill.evaluation.protocol`), built on first use; the
  AdvBench ``align`` part for the refusal-mix baseline.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..atomic import write_jsonl
from ..data import bbh_cot
from ..evaluation.items import ind_documents, interleave_by_task
from ..records import RationaleRecord


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file; a line that is not JSON raises ``ValueError`` naming the file and the line."""
    rows = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    return rows


def harmful_prompts(path: Path | str, n: int) -> list[str]:
    """The first ``n`` questions of a suite safety file (``safety/advbench.jsonl``: the held-out AdvBench prompts)."""
    return [row["question"] for row in read_jsonl(Path(path))][:n]


def record_length(record: RationaleRecord, tokenizer) -> int:
    from ..dataset import tokenize_records

    return len(tokenize_records([record], tokenizer, "standard")["input_ids"][0])


def fitting_records(records: list[RationaleRecord], tokenizer, max_length: int, limit: int = 0) -> list[RationaleRecord]:
    """``records`` whose standard rendering fits ``max_length`` tokens, in task round-robin order; at most ``limit`` (0: all)."""
    kept = []
    for record in interleave_by_task(records, lambda r: r.task):
        if record_length(record, tokenizer) <= max_length:
            kept.append(record)
            if limit and len(kept) >= limit:
                break
    return kept


def training_records(tokenizer, max_length: int, limit: int = 0) -> list[RationaleRecord]:
    """bbh-cot training records (correct rationales, held-out ids excluded) that fit ``max_length`` tokens."""
    return fitting_records(bbh_cot.load_bbh_cot("train"), tokenizer, max_length, limit)


#: share of the held-out bbh-cot items in the calibration part (the rest is the test part)
CAPABILITY_CALIBRATION_SHARE = 0.3
CAPABILITY_PARTS = ("calibration", "test")


def capability_part(item_id: str) -> str:
    """``calibration`` iff the first 32 bits of sha256("capability:" + id), as a fraction, are below
    :data:`CAPABILITY_CALIBRATION_SHARE`, else ``test`` (fixed in code, independent of the held-out rule's hash)."""
    value = int(hashlib.sha256(f"capability:{item_id}".encode()).hexdigest()[:8], 16) / 2**32
    return "calibration" if value < CAPABILITY_CALIBRATION_SHARE else "test"


def ood_status(cache: Path | None = None) -> dict[str, Any]:
    """Whether the OOD file (MMLU questions from the ``lm-eval`` wheel) can be built offline;
    ``{"available", "path", "tasks", "reason"}``.

    "Unavailable" is only the documented case: the pinned wheel cannot be fetched or read
    (:class:`~trl_safedistill.data.offline.OfflineDataError`, e.g. no network and no cached wheel).
    Any other error (a bug in the item code, a malformed file) raises: the run must not silently lose OOD.
    """
    from ..data.offline import OfflineDataError
    from ..evaluation import prepare

    try:
        path = prepare.task_file("ood/_mix.jsonl", cache)
    except OfflineDataError as error:
        return {"available": False, "path": None, "tasks": ["mmlu"], "reason": f"{type(error).__name__}: {error}"}
    return {"available": True, "path": str(path), "tasks": ["mmlu"], "reason": None}


def safety_files(cache: Path | None = None) -> dict[str, dict[str, str]]:
    """The protocol's prepared safety files (built on first use): ``{part: {set: path}}``."""
    from ..evaluation import prepare, protocol

    return {part: {name: str(prepare.task_file(protocol.task_file(name, part), cache))
                   for name in (*protocol.HARMFUL_SETS[part], *protocol.BENIGN_SETS)}
            for part in protocol.PARTS}


def align_prompts() -> list[str]:
    """AdvBench ``align`` part: harmful prompts for alignment and refusal mixing, never evaluated."""
    from ..data import offline

    return offline.safety_split(offline.advbench_goals(), "align")


def prepare_data(directory: Path, tokenizer, max_length: int, max_train_records: int = 0, n_loss: int = 0,
                 cache: Path | None = None) -> dict[str, Any]:
    """Write the data files into ``directory``; returns the counts and paths (the stage result).

    ``n_loss`` caps the calibration rationales kept for the curves' held-out loss (0: all that fit ``max_length``);
    the test part keeps every rationale that fits (the final evaluation takes its first ``n_nll``).
    """
    records = training_records(tokenizer, max_length, max_train_records)
    write_jsonl(directory / "train.jsonl", [r.to_dict() for r in records])
    gen_docs, mc_docs = ind_documents()
    loss_pool = fitting_records(bbh_cot.load_bbh_cot("heldout"), tokenizer, max_length)
    counts: dict[str, dict[str, int]] = {}
    for part in CAPABILITY_PARTS:
        gen = [d for d in gen_docs if capability_part(d["id"]) == part]
        mc = [d for d in mc_docs if capability_part(d["id"]) == part]
        loss = [r for r in loss_pool if capability_part(f"bbhcot-{r.id}") == part]
        if part == "calibration" and n_loss:
            loss = loss[:n_loss]
        write_jsonl(directory / f"ind_gen_{part}.jsonl", gen)
        write_jsonl(directory / f"ind_mc_{part}.jsonl", mc)
        write_jsonl(directory / f"heldout_records_{part}.jsonl", [r.to_dict() for r in loss])
        counts[part] = {"ind_gen": len(gen), "ind_mc": len(mc), "heldout_records": len(loss)}
    harmful_align = align_prompts()
    write_jsonl(directory / "align_prompts.jsonl", [{"prompt": p} for p in harmful_align])
    safety = safety_files(cache)
    ood = ood_status(cache)
    tasks: dict[str, int] = {}
    for record in records:
        tasks[record.task] = tasks.get(record.task, 0) + 1
    return {
        "train_records": len(records),
        "train_tasks": tasks,
        "train_available": len(bbh_cot.load_bbh_cot("train")),
        "capability": counts,
        "align_prompts": len(harmful_align),
        "safety_files": safety,
        "ood": ood,
        "max_length": max_length,
    }


def load_records(path: Path) -> list[RationaleRecord]:
    rows = read_jsonl(path)
    return [RationaleRecord(**{**row, "choices": tuple(row["choices"]) if row.get("choices") else None}) for row in rows]
