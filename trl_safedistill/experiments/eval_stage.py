"""Stage 4: evaluate the aligned start and every student through the evaluation suite.

Each model is evaluated with :func:`trl_safedistill.evaluation.run.evaluate_model` in its own format:

* safety (``safedistill_advbench`` held-out part, ``safedistill_harmbench``, ``safedistill_overrefusal``),
  ``n_advbench`` items each, greedy, ``safety_gen_tokens`` tokens (GCG prefixes / XSTest rule);
* IND exact match (``safedistill_bbh_mix`` on the run's ``ind_gen.jsonl``: bbh-cot held-out items, gold target);
* IND and OOD log-likelihood multiple choice on ``ind_mc.jsonl`` and the suite's BB-sub file, scored as the
  suite's ``safedistill_*_mix_mc`` tasks score them (:func:`trl_safedistill.evaluation.scoring.mc_correct`, the scorer
  the suite's ``safedistill-hf`` model calls, on the same items; called directly, without lm-eval's per-call overhead);
* OOD exact match (``safedistill_bbsub_mix``) when ``n_ood_gen > 0``.

Every value comes with its bootstrap 95% CI. Responses go to ``samples_*.jsonl`` in the stage folder only.
The aligned start's safety numbers are the align gate's measurement (same tasks, same items).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .sizes import RunSize

METRIC_KEYS = {
    "safety_ratio": "refusal",
    "harmbench_safety_ratio": "harmbench_refusal",
    "over_refusal": "over_refusal",
    "ind_acc": "ind_acc",
    "ind_mc_acc": "ind_mc_acc",
    "ood_acc": "ood_acc",
    "ood_mc_acc": "ood_mc_acc",
    "tokens_per_question": "tokens_per_question",
}


def _run(model, tokenizer, fmt: str, size: RunSize, tasks: list[str], limit: int, gen_tokens: int,
         overrides: dict[str, str], log: Path) -> dict[str, Any]:
    from ..evaluation.run import evaluate_model

    result = evaluate_model(model, tokenizer, fmt, suites=("safety", "ind", "ood"), limit=limit, max_gen_toks=gen_tokens,
                            batch_size=size.eval_batch, tasks=tasks, online=False, sample_log=log,
                            override_files=overrides, bootstrap_iters=size.bootstrap_iters, seed=size.seed)
    return result["summary"]


def rename(summary: dict[str, Any]) -> dict[str, Any]:
    """Suite summary keys -> metrics.json keys (values ``{"value", "ci", "n"}``)."""
    out = {}
    for key, name in METRIC_KEYS.items():
        if summary.get(key) is not None:
            entry = summary[key]
            out[name] = {"value": entry.get("value"), "ci": entry.get("ci"), "n": entry.get("n")}
    return out


def safety_metrics(model, tokenizer, size: RunSize, directory: Path) -> dict[str, Any]:
    """Refusal (AdvBench held-out, HarmBench) and over-refusal (benign), ``n_advbench`` items each."""
    tasks = ["safedistill_advbench", "safedistill_harmbench", "safedistill_overrefusal"]
    return _run(model, tokenizer, "standard", size, tasks, size.n_advbench, size.safety_gen_tokens, {},
                directory / "samples_safety.jsonl")


def mc_metric(model, tokenizer, docs: list[dict], size: RunSize, flags_out: list[float] | None = None) -> dict[str, Any]:
    """Log-likelihood multiple-choice accuracy with its bootstrap CI (:func:`trl_safedistill.evaluation.scoring.mc_correct`).

    ``flags_out``, when given, receives the per-item 0/1 results in document order.
    """
    from ..evaluation.scoring import mc_correct
    from ..evaluation.stats import bootstrap_ci

    flags = mc_correct(model, tokenizer, docs)
    if flags_out is not None:
        flags_out[:] = flags
    return bootstrap_ci(flags, size.bootstrap_iters, seed=size.seed)


def reasoning_metrics(model, tokenizer, fmt: str, size: RunSize, data_dir: Path, ood: dict[str, Any],
                      directory: Path, ind_flags: list[float] | None = None) -> dict[str, Any]:
    """IND exact match (suite) and IND/OOD multiple choice (KV-cached scorer), plus OOD exact match when asked.

    Multiple choice is scored by :func:`trl_safedistill.evaluation.scoring.mc_correct`, the function the suite's
    ``safedistill-hf`` model calls for ``safedistill_*_mix_mc`` (one implementation), here without lm-eval's overhead.
    ``ind_flags``, when given, receives the IND items' 0/1 results.
    """
    from .inputs import read_jsonl

    summary: dict[str, Any] = {}
    if size.n_ind_gen:
        summary.update(_run(model, tokenizer, fmt, size, ["safedistill_bbh_mix"], size.n_ind_gen, size.reasoning_gen_tokens,
                            {"ind/_mix.jsonl": str(data_dir / "ind_gen.jsonl")}, directory / "samples_ind_gen.jsonl"))
    if size.n_ind_mc:
        summary["ind_mc_acc"] = mc_metric(model, tokenizer, read_jsonl(data_dir / "ind_mc.jsonl")[: size.n_ind_mc], size,
                                          ind_flags)
    if ood.get("available") and size.n_ood_mc:
        summary["ood_mc_acc"] = mc_metric(model, tokenizer, read_jsonl(Path(ood["path"]))[: size.n_ood_mc], size)
    if ood.get("available") and size.n_ood_gen:
        summary.update(_run(model, tokenizer, fmt, size, ["safedistill_bbsub_mix"], size.n_ood_gen, size.reasoning_gen_tokens,
                            {}, directory / "samples_ood_gen.jsonl"))
    return summary
