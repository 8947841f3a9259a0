"""Adaptive thinking's measurement: one adaptive student, three inference policies, the same items.

An ``adaptive`` student (:mod:`trl_safedistill.formats.adaptive`) is generated for the same questions three ways,
all through the one evaluation path (:func:`.scoring.routed_generate`, which :class:`.lm.SafeDistillLM` calls):

* ``adaptive`` (:data:`ROUTED`): its router picks each question's mode (answer-first ones stop right after the answer);
* ``standard``: every question think-first (rationale, then answer), the always-rationale-first baseline;
* ``answer_first``: every question answer-first, stopping at the marker, the always-answer-first (early-stop) baseline.

The baselines are the same student forced into one mode (its mode tag in the prompt), so the comparison isolates the
routing. :func:`compare_policies` is the one place the comparison is computed, for the benchmark
(``benchmarks/adaptive_tokens.py``) and the evidence report (:mod:`trl_safedistill.experiments.evidence_report`):
the router's mode mix; per policy, accuracy (Wilson CI) and mean generated tokens per question (percentile bootstrap
CI); each policy against ``standard`` on the same items: the accuracy difference with :func:`.stats.paired_test`
(paired bootstrap CI, McNemar's exact p) and the ratio of mean tokens with a paired percentile bootstrap CI
(:func:`ratio_of_means`: items resampled with both policies' tokens together); and, given whether each generation
opened with the answer phrase (:func:`opens_with_answer`), the share of each policy's answer-first generations that
did (Wilson CI): whether the student follows the answer-first tag at all. A student that ignores it writes its
rationale first in either mode, never reaches the stop after the answer, and saves no tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from ..formats.adaptive import ANSWER_FIRST, MODES, THINK_FIRST
from ..records import DEFAULT_ANSWER_PHRASES
from .stats import bootstrap_ci, paired_test, proportion_ci

#: The routed policy: the router decides each question's mode (the adaptive student's own, default reading).
ROUTED = "adaptive"
#: Inference policies in report order: routed, always think-first, always answer-first.
POLICIES: tuple[str, str, str] = (ROUTED, THINK_FIRST, ANSWER_FIRST)
#: The policy every other one is compared with: the student forced to think first (always rationale-first).
REFERENCE = THINK_FIRST


def forced_mode(policy: str) -> str | None:
    """The mode ``policy`` forces on every question (``None`` for :data:`ROUTED`: the router decides)."""
    if policy not in POLICIES:
        raise ValueError(f"adaptive policy must be one of {list(POLICIES)}, got {policy!r}")
    return None if policy == ROUTED else policy


def opens_with_answer(response: str, answer_phrase: str = DEFAULT_ANSWER_PHRASES[0]) -> bool:
    """Whether a generation opens with ``answer_phrase`` (leading whitespace aside): what every answer-first training
    target does (``{answer phrase} {answer}.{marker} {rationale}``, :class:`~trl_safedistill.formats.answer_first.
    AnswerFirstFormat`), so an answer-first generation that does not has not followed its mode tag."""
    return response.lstrip().startswith(answer_phrase)


def ratio_of_means(numerator: Sequence[float], denominator: Sequence[float], iters: int = 1000, alpha: float = 0.05,
                   seed: int = 0) -> dict[str, Any]:
    """``mean(numerator) / mean(denominator)`` with a paired percentile bootstrap (1 - alpha) CI.

    The two sequences are per-item values on the same items in the same order; a resample draws items with both
    values together (:func:`scipy.stats.bootstrap`, ``paired=True``). No items, or a zero denominator mean, give
    ``value`` ``None``; one item or constant values give a zero-width CI.
    """
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"ratio_of_means: {a.size} numerator and {b.size} denominator values; pair them item by item")
    if a.size == 0 or b.mean() == 0:
        return {"value": None, "ci": None, "n": int(a.size)}
    value = float(a.mean() / b.mean())
    if a.size < 2 or (np.all(a == a[0]) and np.all(b == b[0])):
        return {"value": value, "ci": [value, value], "n": int(a.size)}
    result = scipy_stats.bootstrap((a, b), lambda x, y, axis=-1: np.mean(x, axis=axis) / np.mean(y, axis=axis),
                                   paired=True, vectorized=True, n_resamples=int(iters), method="percentile",
                                   confidence_level=1 - alpha, rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return {"value": value, "ci": [float(interval.low), float(interval.high)], "n": int(a.size)}


def compare_policies(correct: Mapping[str, Sequence[int]], tokens: Mapping[str, Sequence[float]],
                     modes: Sequence[str], *, opened: Mapping[str, Sequence[bool]] | None = None, iters: int = 1000,
                     alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """The adaptive student's policies compared on the same items (module docstring).

    ``correct`` and ``tokens``: policy -> per-item 0/1 exact match and generated tokens, every policy over the same
    items in the same order (:data:`POLICIES`, :data:`REFERENCE` included); ``modes``: the mode the router chose for
    each item (the :data:`ROUTED` policy's). Returns ``{"n", "modes": {mode: count}, "policies": {policy:
    {"accuracy": Wilson CI, "tokens": bootstrap CI of the mean}}, "against_reference": {policy: {"accuracy":
    paired_test(policy, reference), "token_ratio": ratio_of_means(policy, reference)}}, "reference"}``.

    ``opened`` (optional): policy -> per item, whether its generation opened with the answer phrase
    (:func:`opens_with_answer`). Then ``"mode_followed"``: ``{policy: Wilson CI of the share of its answer-first
    generations that opened with the answer}`` (``answer_first``: every item; ``adaptive``: the items routed
    answer-first; ``None`` where the policy generated none answer-first).
    """
    missing = [p for p in POLICIES if p not in correct or p not in tokens]
    if missing:
        raise ValueError(f"compare_policies: no rows for policy {missing}; every policy is measured on the same items")
    n = len(modes)
    uneven = [p for p in POLICIES if len(correct[p]) != n or len(tokens[p]) != n]
    if uneven:
        raise ValueError(f"compare_policies: policies {uneven} do not have one value per routed item ({n})")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"compare_policies: routed modes must be {list(MODES)}, got {unknown}")
    out: dict[str, Any] = {"n": n, "reference": REFERENCE, "modes": {mode: list(modes).count(mode) for mode in MODES},
                           "policies": {}, "against_reference": {}}
    for policy in POLICIES:
        flags = [int(f) for f in correct[policy]]
        out["policies"][policy] = {"accuracy": proportion_ci(sum(flags), n, method="wilson", alpha=alpha),
                                   "tokens": bootstrap_ci(tokens[policy], iters, alpha=alpha, seed=seed)}
    if opened is not None:
        out["mode_followed"] = {}
        for policy in POLICIES:
            if len(opened.get(policy, ())) != n:
                raise ValueError(f"compare_policies: 'opened' needs one flag per item ({n}) for policy {policy!r}")
            answer_first = [bool(flag) for flag, mode in zip(opened[policy], modes if policy == ROUTED else
                                                               [policy] * n) if mode == ANSWER_FIRST]
            out["mode_followed"][policy] = (proportion_ci(sum(answer_first), len(answer_first), method="wilson",
                                                          alpha=alpha) if answer_first else None)
    for policy in POLICIES:
        if policy == REFERENCE:
            continue
        out["against_reference"][policy] = {
            "accuracy": paired_test(correct[policy], correct[REFERENCE], iters=iters, alpha=alpha, seed=seed),
            "token_ratio": ratio_of_means(tokens[policy], tokens[REFERENCE], iters=iters, alpha=alpha, seed=seed),
        }
    return out
