"""``trl-safedistill judge validate FILE``: a refusal judge's agreement with human labels, with 95% intervals.

``FILE`` is a labelled JSONL (:func:`~.judge.read_labelled`: ``response`` and ``label`` in
compliance / full_refusal / partial_refusal, or a boolean ``refusal``; ``prompt`` optional), or a folder
holding ``labelled_responses.jsonl``. Reported for "refusal" (= full or partial refusal):

* accuracy, precision and recall, each a proportion with its Wilson 95% interval
  (``statsmodels.stats.proportion.proportion_confint``);
* F1 with a percentile bootstrap 95% interval over items (``scipy.stats.bootstrap``, paired resampling
  of (judgment, label), 2,000 resamples, seed 0 unless ``--seed``);
* the confusion counts and the number of degenerate responses (never judged a refusal).

Nothing of the responses is printed; ``--output DIR`` writes ``judge_validation.json`` (the numbers)
and ``judgments.jsonl`` (per item: line index, label, judgment, degenerate reason, score; no text).
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trl_safedistill.atomic import write_json, write_jsonl
from trl_safedistill.errors import UserError
from trl_safedistill.evaluation.judge import (
    JUDGES,
    LABELS_FILE,
    Judgment,
    confusion,
    load_refusal_judge,
    load_resource,
    read_labelled,
)

BOOTSTRAP_RESAMPLES = 2000


def wilson(count: int, total: int) -> dict[str, Any]:
    """``{"value", "ci", "count", "n"}``: the proportion ``count / total`` and its Wilson 95% interval (``None`` if total is 0)."""
    from statsmodels.stats.proportion import proportion_confint

    if total == 0:
        return {"value": None, "ci": None, "count": 0, "n": 0}
    low, high = proportion_confint(count, total, alpha=0.05, method="wilson")
    return {"value": count / total, "ci": [float(low), float(high)], "count": int(count), "n": int(total)}


def _f1(predicted: np.ndarray, actual: np.ndarray, axis: int = -1) -> np.ndarray:
    """F1 of "refusal" along ``axis`` (0 where there is neither a predicted nor an actual refusal)."""
    tp = (predicted * actual).sum(axis=axis)
    fp = (predicted * (1 - actual)).sum(axis=axis)
    fn = ((1 - predicted) * actual).sum(axis=axis)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def f1_bootstrap(
    predicted: Sequence[bool], actual: Sequence[bool], seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES
) -> dict[str, Any]:
    """F1 of "refusal" and its percentile bootstrap 95% interval (items resampled with their labels).

    ``value`` is ``None`` when there is no refusal among either the judgments or the labels (F1 undefined).
    A bootstrap distribution without spread (e.g. every item right) gives ``[value, value]``.
    """
    from scipy import stats

    p = np.asarray(predicted, dtype=float)
    a = np.asarray(actual, dtype=float)
    if p.size == 0 or (p.sum() == 0 and a.sum() == 0):
        return {"value": None, "ci": None, "resamples": 0, "seed": seed}
    value = float(_f1(p, a))
    if p.size == 1:
        return {"value": value, "ci": [value, value], "resamples": 0, "seed": seed}
    result = stats.bootstrap(
        (p, a),
        _f1,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng(seed),
    )
    distribution = np.asarray(result.bootstrap_distribution)
    if np.ptp(distribution) == 0:
        ci = [value, value]
    else:
        ci = [float(result.confidence_interval.low), float(result.confidence_interval.high)]
    return {"value": value, "ci": ci, "resamples": resamples, "seed": seed}


def agreement(judgments: Sequence[Judgment], actual: Sequence[bool], seed: int = 0) -> dict[str, Any]:
    """Accuracy / precision / recall (Wilson) and F1 (bootstrap) of ``judgments`` against ``actual``, counts."""
    if len(judgments) != len(actual):
        raise ValueError(f"{len(judgments)} judgments for {len(actual)} labels")
    predicted = [j.refusal for j in judgments]
    counts = confusion(predicted, actual)
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    reasons = Counter(j.reason for j in judgments if j.degenerate)
    return {
        "n": len(actual),
        "refusals_labelled": int(sum(actual)),
        "accuracy": wilson(tp + tn, len(actual)),
        "precision": wilson(tp, tp + fp),
        "recall": wilson(tp, tp + fn),
        "f1": f1_bootstrap(predicted, actual, seed=seed),
        "confusion": counts,
        "degenerate": {
            "count": sum(reasons.values()),
            "by_reason": dict(sorted(reasons.items())),
            "labelled_refusal": sum(1 for j, a in zip(judgments, actual) if j.degenerate and a),
        },
    }


def _fmt(metric: dict[str, Any]) -> str:
    if metric["value"] is None:
        return "undefined"
    low, high = metric["ci"]
    return f"{metric['value']:.3f}  [{low:.3f}, {high:.3f}]"


def format_agreement(name: str, source: str, result: dict[str, Any]) -> str:
    """The console table (numbers only)."""
    c, d = result["confusion"], result["degenerate"]
    lines = [
        f"judge {name} on {source}: {result['n']} responses, {result['refusals_labelled']} labelled refusals",
        f"  accuracy   {_fmt(result['accuracy'])}  (Wilson 95%)",
        f"  precision  {_fmt(result['precision'])}  (Wilson 95%)",
        f"  recall     {_fmt(result['recall'])}  (Wilson 95%)",
        f"  F1         {_fmt(result['f1'])}  (bootstrap 95%, {result['f1']['resamples']} resamples, seed {result['f1']['seed']})",
        f"  confusion  tp {c['tp']}  fp {c['fp']}  fn {c['fn']}  tn {c['tn']}",
        f"  degenerate {d['count']}"
        + (f"  ({', '.join(f'{k} {v}' for k, v in d['by_reason'].items())})" if d["count"] else ""),
    ]
    return "\n".join(lines)


def validate_main(argv: list[str]) -> int:
    """``judge validate FILE [--judge NAME] [--output DIR] [--seed N]``."""
    parser = argparse.ArgumentParser(prog="trl-safedistill judge", description="refusal judges")
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser(
        "validate", help="score a labelled JSONL: accuracy/precision/recall/F1 of refusal, 95%% CIs"
    )
    validate.add_argument(
        "file", help="labelled JSONL (response + label or refusal), or a folder with labelled_responses.jsonl"
    )
    validate.add_argument("--judge", default="default", help=f"one of {', '.join(JUDGES)} (default: default)")
    validate.add_argument("--output", default=None, help="folder for judge_validation.json and judgments.jsonl")
    validate.add_argument("--seed", type=int, default=0, help="seed of the F1 bootstrap (default 0)")
    args = parser.parse_args(argv)
    if args.judge not in JUDGES:
        raise UserError(f"--judge {args.judge!r}: unknown judge; use one of {', '.join(JUDGES)}")
    rows = read_labelled(args.file)
    judge = load_refusal_judge(args.judge)
    prompts = [r.prompt or "" for r in rows] if all(r.prompt is not None for r in rows) else None
    judgments = judge.judge([r.response for r in rows], prompts)
    actual = [r.refusal for r in rows]
    result = agreement(judgments, actual, seed=args.seed)
    print(format_agreement(judge.name, args.file, result))
    note = _in_sample_note(args.file, judge.name)
    if note:
        result["note"] = note
        print(f"  note: {note}")
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "judge_validation.json", {"judge": judge.name, "file": str(args.file), **result})
        write_jsonl(
            out / "judgments.jsonl",
            (
                {
                    "index": i,
                    "label": r.label,
                    "refusal_labelled": r.refusal,
                    "refusal": j.refusal,
                    "degenerate": j.degenerate,
                    "reason": j.reason,
                    "score": j.score,
                }
                for i, (r, j) in enumerate(zip(rows, judgments))
            ),
        )
        print(f"wrote {out / 'judge_validation.json'} and {out / 'judgments.jsonl'}")
    return 0


def _in_sample_note(file: str, judge_name: str) -> str | None:
    """A warning when ``file`` is the default judge's own training data (its agreement there is in-sample)."""
    if judge_name != "refusal-v1":
        return None
    path = Path(file)
    path = path / LABELS_FILE if path.is_dir() else path
    provenance = load_resource()["provenance"]
    if hashlib.sha256(path.read_bytes()).hexdigest() != provenance["sha256"]:
        return None
    pooled = load_resource()["cross_validation"]["refusal-v1"]["pooled"]
    return (
        f"this file is {judge_name}'s training data: the numbers above are in-sample; its leave-one-model-out "
        f"agreement is accuracy {pooled['accuracy']:.3f}, F1 {pooled['f1']:.3f} (resource, cross_validation)"
    )


def judge_main(argv: list[str]) -> int:
    """``trl-safedistill judge <subcommand>``: only ``validate`` for now."""
    return validate_main(argv)
