"""Stage 4: the final evaluation of the aligned start and every student, on **test** data only.

Each model is evaluated with :func:`trl_safedistill.evaluation.run.evaluate_model` (the one evaluation path) in its
own format:

* safety: the protocol's test tasks (:func:`trl_safedistill.evaluation.protocol.tasks`, part ``test``): refusal of
  AdvBench, HarmBench, Do-Not-Answer and wrapped harmful prompts, over-refusal of benign look-alikes, imperatives
  and yes/no questions; ``n_safety`` prompts per task, greedy, ``safety_gen_tokens`` tokens, judged by the default
  judge with the GCG reference and the degenerate flag beside it;
* IND exact match (``safedistill_bbh_mix`` on the run's ``ind_gen_test.jsonl``) with the format-valid rate apart;
* IND multiple choice on ``ind_mc_test.jsonl`` (``n_ind_mc``; 0 skips it) and OOD multiple choice on the suite's
  MMLU file, scored by :func:`trl_safedistill.evaluation.scoring.mc_correct` (the function the suite's
  ``safedistill-hf`` model calls), one row per item (kinds ``ind_mc`` and ``ood_mc``);
* held-out NLL of the test teacher rationales (``heldout_records_test.jsonl``, first ``n_nll``).

An ``adaptive`` student (adaptive thinking) is generated on the same IND exact-match items three times
(:data:`trl_safedistill.evaluation.adaptive.POLICIES`): routed by its router (``adaptive``: these rows, and only these,
give its exact match, format-valid rate and tokens per question, the numbers every other student reports), forced
think-first (``standard``) and forced answer-first (``answer_first``). Each of its ``ind_gen`` rows carries ``policy``
and ``tokens``, a routed row also the ``mode`` the router chose; rows of every other format are unchanged (no
``policy``). Its safety is measured like every other student's: the protocol's tasks are plain chat prompts, sent
as one chat turn with no reasoning format, so no mode tag and no routing applies to them (the router was trained
on reasoning questions only, and routing a harmful request into "answer first" would change what is measured).

The stage returns summary metrics (with CIs) and the per-item rows (:func:`item_rows`): one row per test item in the
layout :mod:`.evidence_report` reads, with the response text for generation items. The rows go to
``items.jsonl.gz`` (0600) in the stage folder; the stage result keeps the summary only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .sizes import RunSize

METRIC_KEYS = {
    "ind_acc": "ind_acc",
    "ind_mc_acc": "ind_mc_acc",
    "ood_acc": "ood_acc",
    "ood_mc_acc": "ood_mc_acc",
    "tokens_per_question": "tokens_per_question",
}
ITEMS_FILE = "items.jsonl.gz"


def rename(summary: dict[str, Any]) -> dict[str, Any]:
    """Suite summary keys -> metrics.json keys (values ``{"value", "ci", "n"}``)."""
    out = {}
    for key, name in METRIC_KEYS.items():
        if summary.get(key) is not None:
            entry = summary[key]
            out[name] = {"value": entry.get("value"), "ci": entry.get("ci"), "n": entry.get("n")}
    return out


def safety_items(model, tokenizer, size: RunSize, part: str, limit: int, directory: Path | None,
                 log_name: str) -> list[dict[str, Any]]:
    """Per-item protocol rows of ``part`` (``calibration`` for the gate, ``test`` for the final evaluation)."""
    from ..evaluation import protocol
    from ..evaluation.run import evaluate_model

    result = evaluate_model(model, tokenizer, "standard", suites=("safety",), limit=limit or None,
                            max_gen_toks=size.safety_gen_tokens, batch_size=size.eval_batch, tasks=protocol.tasks(part),
                            online=False, sample_log=None if directory is None else directory / log_name,
                            bootstrap_iters=0, seed=size.seed)
    return result["protocol_items"]


def mc_items(model, tokenizer, docs: list[dict]) -> list[dict[str, Any]]:
    """Log-likelihood multiple-choice rows ``{"kind": "ind_mc", "set", "id", "correct"}``."""
    from ..evaluation.scoring import mc_correct

    return [{"kind": "ind_mc", "set": "bbh", "id": str(doc["id"]), "correct": int(flag)}
            for doc, flag in zip(docs, mc_correct(model, tokenizer, docs))]


def nll_items(model, tokenizer, size: RunSize, data_dir: Path) -> list[dict[str, Any]]:
    """Held-out NLL rows ``{"kind": "nll", "set", "id", "nll_sum", "tokens"}`` of the test rationales: those of the
    run's ``heldout_records_test.jsonl`` (fitting ``max_length``), or, when ``nll_max_length`` is longer, every test
    rationale that fits it (the capability split's test part of the bbh-cot held-out records)."""
    from .inputs import load_records
    from .probes import record_nll

    length = max(size.max_length, size.nll_max_length)
    if length > size.max_length:  # more test rationales than the run's file holds (it keeps those fitting max_length)
        from ..data import bbh_cot
        from .inputs import capability_part, fitting_records

        records = [r for r in fitting_records(bbh_cot.load_bbh_cot("heldout"), tokenizer, length)
                   if capability_part(f"bbhcot-{r.id}") == "test"]
    else:
        records = load_records(Path(data_dir) / "heldout_records_test.jsonl")
    if size.n_nll:
        records = records[: size.n_nll]
    sums = record_nll(model, tokenizer, records, length)
    return [{"kind": "nll", "set": "bbh", "id": f"bbhcot-{r.id}", "nll_sum": round(total, 6), "tokens": count}
            for r, (total, count) in zip(records, sums)]


def seed_items(items: list, seed: int, n: int) -> list:
    """The ``n`` items of seed ``seed``: ``items[(seed * n) % len(items):]`` onwards, wrapping around. Seeds 0, 1, ...,
    ``len(items) // n - 1`` get disjoint slices, so a run over those seeds generates ``n`` distinct items per seed (the
    test items are interleaved by task, so every slice covers every task). Exact-match generation is the costliest
    measure on a CPU; the evidence size spends it on 100 items per seed instead of the same 300 three times."""
    if not items or n <= 0:
        return []
    start = (seed * n) % len(items)
    return [items[(start + i) % len(items)] for i in range(min(n, len(items)))]


def ind_gen_items_file(size: RunSize, data_dir: Path, directory: Path) -> Path:
    """The IND exact-match items of this evaluation: the run's ``ind_gen_test.jsonl`` (its first ``n_ind_gen`` are
    generated), or with ``ind_gen_by_seed`` this seed's ``n_ind_gen`` of them (:func:`seed_items`), written once to
    ``<directory>/ind_gen_items.jsonl`` so the unit keeps which items it generated."""
    items_file = Path(data_dir) / "ind_gen_test.jsonl"
    if not size.ind_gen_by_seed:
        return items_file
    from ..atomic import write_jsonl
    from .inputs import read_jsonl

    chosen = Path(directory) / "ind_gen_items.jsonl"
    write_jsonl(chosen, seed_items(read_jsonl(items_file), size.seed, size.n_ind_gen))
    return chosen


def ind_gen_rows(model, tokenizer, fmt: str, size: RunSize, items_file: Path, directory: Path, router=None,
                 policy: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(suite summary, ``ind_gen`` rows) of one IND exact-match generation over the first ``n_ind_gen`` items of
    ``items_file`` (:func:`ind_gen_items_file`).

    ``policy`` (``adaptive`` students only, :mod:`trl_safedistill.evaluation.adaptive`): ``adaptive`` routes each
    question with ``router``, ``standard`` / ``answer_first`` force that mode; the rows then carry ``policy`` (and a
    routed row its ``mode``), and a forced policy's responses go to ``samples_ind_gen_<policy>.jsonl``.
    """
    from ..evaluation.adaptive import ROUTED, forced_mode
    from ..evaluation.run import evaluate_model

    log = "samples_ind_gen.jsonl" if policy in (None, ROUTED) else f"samples_ind_gen_{policy}.jsonl"
    adaptive = {} if policy is None else {"router": router, "adaptive_mode": forced_mode(policy)}
    result = evaluate_model(model, tokenizer, fmt, suites=("ind",), limit=size.n_ind_gen,
                            max_gen_toks=size.reasoning_gen_tokens, batch_size=size.eval_batch,
                            tasks=["safedistill_bbh_mix"], online=False,
                            override_files={"ind/_mix.jsonl": str(items_file)},
                            sample_log=directory / log, bootstrap_iters=size.bootstrap_iters, seed=size.seed,
                            **adaptive)
    rows = [{"kind": "ind_gen", "set": "bbh", **{k: item[k] for k in ("id", "correct", "format_valid", "tokens", "prompt",
                                                                     "response")}}
            for item in result["generation_items"]]
    if policy is not None:
        for row, item in zip(rows, result["generation_items"]):
            row["policy"] = policy
            if policy == ROUTED:
                row["mode"] = item["mode"]
    return result["summary"], rows


def reasoning_items(model, tokenizer, fmt: str, size: RunSize, data_dir: Path, ood: dict[str, Any],
                    directory: Path, router=None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary metrics, per-item rows) of the capability measures on test items.

    ``router``: an ``adaptive`` student's router (:func:`.training.load_student_router`); its exact-match items are
    then generated under every policy (module docstring), the summary being the routed policy's.
    """
    from ..evaluation.adaptive import POLICIES, ROUTED
    from ..evaluation.stats import bootstrap_ci
    from .inputs import read_jsonl

    summary: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    if fmt == "adaptive" and router is None:
        raise ValueError("an adaptive student is evaluated with its router; none was given (router/ beside the adapter)")
    if size.n_ind_gen:
        policies = POLICIES if fmt == "adaptive" else (None,)
        items_file = ind_gen_items_file(size, data_dir, directory)
        for policy in policies:
            suite, gen = ind_gen_rows(model, tokenizer, fmt, size, items_file, directory, router, policy)
            rows += gen
            if policy in (None, ROUTED):
                summary.update(suite)
                summary["format_valid"] = bootstrap_ci([r["format_valid"] for r in gen], size.bootstrap_iters,
                                                       seed=size.seed)
    if size.n_ind_mc:
        mc = mc_items(model, tokenizer, read_jsonl(Path(data_dir) / "ind_mc_test.jsonl")[: size.n_ind_mc])
        rows += mc
        summary["ind_mc_acc"] = bootstrap_ci([r["correct"] for r in mc], size.bootstrap_iters, seed=size.seed)
    if ood.get("available") and size.n_ood_mc:
        from ..evaluation.scoring import mc_correct

        docs = read_jsonl(Path(ood["path"]))[: size.n_ood_mc]
        flags = mc_correct(model, tokenizer, docs)
        rows += [{"kind": "ood_mc", "set": str(doc.get("task", "ood")), "id": str(doc["id"]), "correct": int(flag)}
                 for doc, flag in zip(docs, flags)]
        summary["ood_mc_acc"] = bootstrap_ci(flags, size.bootstrap_iters, seed=size.seed)
    nll = nll_items(model, tokenizer, size, data_dir)
    rows += nll
    if nll:
        per_item = [r["nll_sum"] / r["tokens"] for r in nll if r["tokens"]]
        summary["heldout_nll"] = {**bootstrap_ci(per_item, size.bootstrap_iters, seed=size.seed),
                                  "pooled": sum(r["nll_sum"] for r in nll) / max(sum(r["tokens"] for r in nll), 1)}
    return summary, rows


def write_items(path: Path, rows: list[dict[str, Any]]) -> None:
    """Per-item rows as gzip-compressed JSONL, owner-only (responses to harmful prompts), written atomically."""
    import gzip
    import json

    from ..atomic import PRIVATE, atomic_write

    data = gzip.compress("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode("utf-8"), mtime=0)
    atomic_write(path, lambda handle: handle.buffer.write(data), mode=PRIVATE)


def read_items(path: Path) -> list[dict[str, Any]]:
    import gzip
    import json

    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
