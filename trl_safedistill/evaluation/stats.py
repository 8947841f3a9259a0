"""Percentile bootstrap confidence intervals (Efron & Tibshirani 1993, ch. 13), by :func:`scipy.stats.bootstrap`.

For per-item scores x_1..x_n, draw B resamples of size n with replacement, take each resample's mean, and report
the alpha/2 and 1 - alpha/2 quantiles of those B means (95%: alpha = 0.05). scipy does the resampling and the
quantiles (``method="percentile"``); the resamples come from ``numpy.random.default_rng(seed)`` in one batch, so the
same seed gives the same resamples as the hand-written version this replaced (the bounds agree to the last bit or
two of a float: scipy interpolates the quantile with a different but equivalent formula).

A paired difference between two rows scored on the same items (``report.paired_difference``) is this interval of
the per-item differences ``d_i = x_i - y_i``: resampling items and taking the mean of ``d`` is the paired bootstrap.

Degenerate inputs have a defined result instead of scipy's error or NaN:

- no items: ``{"value": None, "ci": None, "n": 0}`` (nothing was measured);
- ``iters <= 0``: the mean with ``ci`` ``None`` (no interval requested);
- one item, or all items equal (e.g. every prompt refused): ``ci`` is ``[value, value]``. That is what the
  percentile bootstrap gives exactly (every resample has the same mean), stated here because scipy refuses
  n = 1; such a zero-width interval says the sample has no spread, not that the rate is known exactly;
- a non-finite value (NaN, inf) is an error: a mean and interval of it would be meaningless.

The claims of the evidence (issue 16 item 5) are differences, so this module also holds the tests that decide them,
each a thin wrapper of statsmodels / scipy with the formula and a reference in its docstring:

- :func:`proportion_ci`: Wilson score or Clopper-Pearson interval of one proportion (non-zero width at 0% and 100%,
  where the percentile bootstrap has none);
- :func:`paired_test`: two models on the same items: difference of proportions, its paired bootstrap CI and
  McNemar's exact test;
- :func:`equivalence_test`: "keeps safety" across seeds, TOST of the mean per-seed difference against +-margin;
- :func:`verdict`: met / not met / undecided from one of those results, by a written rule;
- :func:`matched_frontier`: a control family's capability at a target refusal, on its monotone envelope
  (:func:`frontier_envelope`); :func:`safer_control_point`: the one comparison left below the envelope's range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import DescrStatsW


def bootstrap_ci(values: Sequence[float], iters: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """``{"value": mean, "ci": [low, high], "n": n}`` with the percentile bootstrap (1 - alpha) CI of the mean.

    ``iters`` is the number of resamples, ``seed`` seeds ``numpy.random.default_rng`` for them. ``value`` is
    ``None`` for no items, ``ci`` ``None`` when ``iters`` is 0; see the module docstring for degenerate inputs.
    """
    data = np.asarray([float(v) for v in values], dtype=float)
    if data.size == 0:
        return {"value": None, "ci": None, "n": 0}
    if not np.all(np.isfinite(data)):
        raise ValueError(f"bootstrap_ci: {int((~np.isfinite(data)).sum())} of {data.size} values are NaN or infinite")
    mean = float(data.mean())
    if iters <= 0:
        return {"value": mean, "ci": None, "n": int(data.size)}
    if data.size == 1 or np.all(data == data[0]):
        return {"value": mean, "ci": [mean, mean], "n": int(data.size)}
    result = stats.bootstrap(
        (data,),
        np.mean,
        n_resamples=int(iters),
        method="percentile",
        confidence_level=1 - alpha,
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return {"value": mean, "ci": [float(interval.low), float(interval.high)], "n": int(data.size)}


#: ``method`` of :func:`proportion_ci` -> statsmodels' name for it.
PROPORTION_METHODS = {"wilson": "wilson", "exact": "beta"}


def proportion_ci(successes: int, n: int, method: str = "wilson", alpha: float = 0.05) -> dict:
    """``{"value": k/n, "ci": [low, high], "n": n, "successes": k, "method": method}``: a (1 - alpha) CI of a proportion.

    The interval of a rate such as "refused 47 of 48 prompts", by :func:`statsmodels.stats.proportion.proportion_confint`.
    Unlike the percentile bootstrap it has non-zero width at 0% and 100% (0/48 and 48/48 do not mean the rate is
    known exactly), and it holds its coverage at the small n of the demo. With p = k/n and z = Phi^-1(1 - alpha/2):

    - ``"wilson"`` (the score interval; Wilson 1927, JASA 22:209; method 3 of Newcombe 1998, Stat Med 17:857;
      recommended by Brown, Cai & DasGupta 2001, Stat Sci 16:101)::

          (p + z^2/(2n) +- z * sqrt(p(1-p)/n + z^2/(4n^2))) / (1 + z^2/n)

      at k = 0 it is [0, z^2/(n + z^2)], at k = n [n/(n + z^2), 1];
    - ``"exact"`` (Clopper & Pearson 1934, Biometrika 26:404; statsmodels' ``"beta"``), guaranteed coverage
      >= 1 - alpha, wider: ``[Beta(alpha/2; k, n-k+1), Beta(1-alpha/2; k+1, n-k)]`` quantiles, with 0 at k = 0 and
      1 at k = n.

    ``n = 0`` gives ``{"value": None, "ci": None, "n": 0, ...}`` (nothing was measured; the same shape as
    :func:`bootstrap_ci` with no items, so a report cell reads "n/a"). Counts that are not whole numbers with
    0 <= successes <= n are an error.
    """
    if method not in PROPORTION_METHODS:
        raise ValueError(f"proportion_ci: method={method!r} is not one of {sorted(PROPORTION_METHODS)}")
    if not 0 < alpha < 1:
        raise ValueError(f"proportion_ci: alpha={alpha} must be between 0 and 1")
    for name, count in (("successes", successes), ("n", n)):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
            raise ValueError(f"proportion_ci: {name}={count!r} must be a whole count")
    if not 0 <= successes <= n:
        raise ValueError(f"proportion_ci: successes={successes} must be between 0 and n={n}")
    out: dict[str, Any] = {"value": None, "ci": None, "n": int(n), "successes": int(successes), "method": method}
    if n == 0:
        return out
    low, high = proportion_confint(int(successes), int(n), alpha=alpha, method=PROPORTION_METHODS[method])
    out["value"] = successes / n
    out["ci"] = [min(max(float(low), 0.0), 1.0), min(max(float(high), 0.0), 1.0)]
    return out


def _flags(name: str, values: Sequence[Any]) -> np.ndarray:
    """``values`` as a 0/1 int array, or a ``ValueError`` naming the first value that is not 0/1."""
    out = np.empty(len(values), dtype=int)
    for i, value in enumerate(values):
        if isinstance(value, (bool, np.bool_)) or value in (0, 1):
            out[i] = int(value)
        else:
            raise ValueError(
                f"paired_test: {name}[{i}] = {value!r} is not 0/1; pass one 0/1 judgment per item (e.g. refused)"
            )
    return out


def paired_test(
    flags_a: Sequence[Any], flags_b: Sequence[Any], iters: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict:
    """Two models judged on the same items (0/1 flags, same items in the same order): their difference and tests.

    Counts of the 2x2 table of pairs: ``both`` (a=1, b=1), ``a_only`` (a=1, b=0), ``b_only`` (a=0, b=1),
    ``neither``. Returns ``{"n", "rate_a", "rate_b", "diff", "ci", "ci_method", "alpha", "p_value", "test",
    "both", "a_only", "b_only", "neither"}`` with:

    - ``diff = rate_a - rate_b = (a_only - b_only) / n``;
    - ``ci``: the (1 - alpha) paired percentile bootstrap CI of ``diff`` (Efron & Tibshirani 1993, ch. 13): items
      are resampled with both models' flags together, which is :func:`bootstrap_ci` of the per-item differences
      ``d_i = a_i - b_i`` (the same resamples as ``scipy.stats.bootstrap((a, b), ..., paired=True)`` with the same
      ``seed``, and the same interval as ``report.paired_difference``). Only discordant items move it; with none
      it is ``[0, 0]``, which says the models never disagreed on these items, not that they are equal in general;
    - ``p_value``: McNemar's exact test (McNemar 1947, Psychometrika 12:153; the exact form in Fagerland, Lydersen
      & Laake 2013, BMC Med Res Methodol 13:91), by ``statsmodels.stats.contingency_tables.mcnemar(exact=True)``:
      under H0 (equal rates) ``a_only ~ Binomial(a_only + b_only, 1/2)``, so the two-sided
      ``p = min(1, 2 * sum_{i <= min(a_only, b_only)} C(a_only + b_only, i) / 2^(a_only + b_only))``; 1 with no
      discordant items. This is the test a verdict should read: the bootstrap interval is coarse when few items are
      discordant.

    Different lengths or a value other than 0/1 (or True/False) raise ``ValueError``; no items gives ``n = 0`` and
    ``None`` for every rate, interval and p-value.
    """
    if len(flags_a) != len(flags_b):
        raise ValueError(
            f"paired_test: flags_a has {len(flags_a)} items but flags_b has {len(flags_b)}; "
            "pass both models' judgments of the same items in the same order"
        )
    a, b = _flags("flags_a", flags_a), _flags("flags_b", flags_b)
    n = int(a.size)
    both, a_only = int(np.sum((a == 1) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
    b_only, neither = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 0) & (b == 0)))
    out: dict[str, Any] = {
        "n": n, "rate_a": None, "rate_b": None, "diff": None, "ci": None,
        "ci_method": "paired percentile bootstrap", "alpha": alpha, "p_value": None,
        "test": "McNemar exact (two-sided binomial)",
        "both": both, "a_only": a_only, "b_only": b_only, "neither": neither,
    }
    if n == 0:
        return out
    paired = bootstrap_ci((a - b).tolist(), iters=iters, alpha=alpha, seed=seed)
    out.update(rate_a=float(a.mean()), rate_b=float(b.mean()), diff=paired["value"], ci=paired["ci"])
    out["p_value"] = float(mcnemar([[both, a_only], [b_only, neither]], exact=True).pvalue)
    return out


def equivalence_test(deltas: Sequence[float], margin: float = 0.05, alpha: float = 0.05) -> dict:
    """TOST: is the mean per-seed difference within +-``margin``? ("keeps safety" across seeds).

    ``deltas`` holds one value per seed, e.g. the student's refusal rate minus its aligned start's, of the same
    seed. Two one-sided t-tests (Schuirmann 1987, J Pharmacokinet Biopharm 15:657; Lakens 2017, Soc Psychol
    Personal Sci 8:355), by ``statsmodels.stats.weightstats.DescrStatsW(deltas).ttost_mean(-margin, margin)``:
    with mean d, standard deviation s, se = s / sqrt(n) and t with n - 1 degrees of freedom,

    - ``p_lower``: H0 mu <= -margin, ``t = (d + margin) / se``, ``p = P(T >= t)``;
    - ``p_upper``: H0 mu >= +margin, ``t = (d - margin) / se``, ``p = P(T <= t)``;
    - ``equivalent`` when both are below ``alpha``, which is the same as the (1 - 2 alpha) CI
      ``d +- t_{1-alpha, n-1} se`` (``ci``, from ``tconfint_mean(alpha=2 alpha)``) lying inside (-margin, margin).

    Returns ``{"n", "mean", "ci", "margin", "alpha", "p_lower", "p_upper", "p_value", "equivalent", "note"}``
    (``p_value`` is the larger one-sided p, the TOST p-value). It cannot decide, and says so in ``note`` with
    ``equivalent`` False and ``ci`` / p-values ``None``, when there are fewer than 2 seeds (no spread to test
    against) or every seed gave the same difference (s = 0: the seeds do not vary the result, so they are not
    replicates and the t statistic is undefined; decide on the item-level :func:`paired_test` instead). A
    single seed that looks close to 0 therefore never passes.
    """
    if not margin > 0:
        raise ValueError(f"equivalence_test: margin={margin} must be positive")
    if not 0 < alpha < 0.5:
        raise ValueError(f"equivalence_test: alpha={alpha} must be between 0 and 0.5")
    data = np.asarray([float(v) for v in deltas], dtype=float)
    if not np.all(np.isfinite(data)):
        raise ValueError(f"equivalence_test: {int((~np.isfinite(data)).sum())} of {data.size} deltas are NaN or infinite")
    out: dict[str, Any] = {
        "n": int(data.size), "mean": float(data.mean()) if data.size else None, "ci": None, "margin": margin,
        "alpha": alpha, "p_lower": None, "p_upper": None, "p_value": None, "equivalent": False, "note": None,
    }
    if data.size < 2:
        out["note"] = f"undecided: {data.size} seed(s); TOST needs at least 2 per-seed differences"
        return out
    if np.all(data == data[0]):
        out["note"] = "undecided: every seed gave the same difference, so the t-test has no spread to test against"
        return out
    described = DescrStatsW(data)
    p_value, (_, p_lower, _), (_, p_upper, _) = described.ttost_mean(-margin, margin)
    low, high = described.tconfint_mean(alpha=2 * alpha)
    out.update(
        ci=[float(low), float(high)], p_lower=float(p_lower), p_upper=float(p_upper), p_value=float(p_value),
        equivalent=bool(p_lower < alpha and p_upper < alpha),
    )
    return out


#: The verdicts :func:`verdict` gives.
VERDICTS = ("met", "not met", "undecided")
SUPERIORITY_RULE = (
    "met when the CI excludes 0 in the claimed direction and p < {alpha}; not met when the CI lies entirely below "
    "the claimed effect ({effect}) in the claimed direction (with effect 0: entirely on the wrong side); "
    "otherwise undecided"
)
EQUIVALENCE_RULE = (
    "met when both one-sided tests reject (p_lower, p_upper < {alpha}: the {level}% CI lies inside +-{margin}); "
    "not met when that CI lies entirely outside +-{margin}; otherwise undecided"
)


def verdict(
    result: Mapping[str, Any],
    claim: str,
    direction: str = "greater",
    min_effect: float = 0.0,
    alpha: float | None = None,
) -> dict:
    """``{"verdict": "met" | "not met" | "undecided", "rule", "reason"}`` for one claim, from one test result.

    ``claim="superiority"`` reads a :func:`paired_test` result (``diff``, ``ci``, ``p_value``); the claim is "a is
    ``direction`` (``"greater"`` or ``"less"``) than b, by at least ``min_effect``". With the CI [lo, hi] turned
    to the claimed direction (negated for ``"less"``):

    - met: lo > 0 and p < alpha (and the CI does not also rule out ``min_effect``);
    - not met: hi < ``min_effect``: the CI excludes the claimed effect; with ``min_effect = 0`` that is the CI lying
      entirely on the wrong side. When a CI excludes 0 but also the claimed effect, "not met" wins: the effect is
      real but smaller than claimed;
    - undecided: otherwise (the CI holds both 0 and the claimed effect; or no CI / p-value).

    ``claim="equivalence"`` reads an :func:`equivalence_test` result (``ci`` is its (1 - 2 alpha) CI, ``margin``,
    ``p_lower``, ``p_upper``):

    - met: both one-sided p-values < alpha (TOST rejects both "below -margin" and "above +margin");
    - not met: the CI lies entirely outside (-margin, margin) (lo >= margin or hi <= -margin): at level alpha the
      difference is beyond the margin;
    - undecided: otherwise, including fewer than 2 seeds or no spread (``ci`` ``None``).

    ``alpha`` defaults to the one stored in ``result`` (the level its CI was computed at), else 0.05. Schuirmann
    1987 and Lakens 2017 give the equivalence logic; the superiority rule is the usual CI-and-test reading of a
    directional claim with a smallest effect of interest (Lakens, Scheel & Isager 2018, AMPPS 1:259).
    """
    if claim not in ("superiority", "equivalence"):
        raise ValueError(f"verdict: claim={claim!r} must be 'superiority' or 'equivalence'")
    if direction not in ("greater", "less"):
        raise ValueError(f"verdict: direction={direction!r} must be 'greater' or 'less'")
    if not min_effect >= 0:
        raise ValueError(f"verdict: min_effect={min_effect} must be >= 0 (the size of the claimed effect)")
    alpha = float(result.get("alpha", 0.05) if alpha is None else alpha)
    ci = result.get("ci")
    if claim == "superiority":
        rule = SUPERIORITY_RULE.format(alpha=alpha, effect=min_effect)
        p_value = result.get("p_value")
        if ci is None or p_value is None:
            return {"verdict": "undecided", "rule": rule, "reason": "no interval or p-value to decide on"}
        sign = 1.0 if direction == "greater" else -1.0
        low, high = sorted((sign * ci[0], sign * ci[1]))
        shown = f"CI [{ci[0]:.4g}, {ci[1]:.4g}], p = {p_value:.4g}, claimed {direction} by >= {min_effect:g}"
        if high < min_effect:
            return {"verdict": "not met", "rule": rule, "reason": f"{shown}: the CI excludes the claimed effect"}
        if low > 0 and p_value < alpha:
            return {"verdict": "met", "rule": rule, "reason": f"{shown}: the CI excludes 0 and p < {alpha:g}"}
        return {"verdict": "undecided", "rule": rule, "reason": f"{shown}: neither 0 nor the claimed effect is excluded"}
    margin = float(result["margin"])
    rule = EQUIVALENCE_RULE.format(alpha=alpha, level=round(100 * (1 - 2 * alpha)), margin=margin)
    p_lower, p_upper = result.get("p_lower"), result.get("p_upper")
    if ci is None or p_lower is None or p_upper is None:
        return {"verdict": "undecided", "rule": rule, "reason": result.get("note") or "no interval or p-values"}
    shown = f"CI [{ci[0]:.4g}, {ci[1]:.4g}], p_lower = {p_lower:.4g}, p_upper = {p_upper:.4g}, margin {margin:g}"
    if p_lower < alpha and p_upper < alpha:
        return {"verdict": "met", "rule": rule, "reason": f"{shown}: both one-sided tests reject"}
    if ci[0] >= margin or ci[1] <= -margin:
        return {"verdict": "not met", "rule": rule, "reason": f"{shown}: the CI lies outside the margin"}
    return {"verdict": "undecided", "rule": rule, "reason": f"{shown}: the CI crosses the margin"}


def frontier_envelope(points: Sequence[Sequence[float]]) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """The monotone (Pareto) envelope of a control family's (refusal, capability) ``points``, and the dominated rest.

    A point with refusal >= and capability >= another's, one of them strictly, dominates it; of equal refusals the
    most capable stays. The envelope is returned refusal rising, capability falling. An empty list or a non-finite
    value is an error.
    """
    pairs = [(float(p[0]), float(p[1])) for p in points]
    if not pairs:
        raise ValueError("frontier_envelope: no (refusal, capability) points")
    if not all(math.isfinite(r) and math.isfinite(c) for r, c in pairs):
        raise ValueError("frontier_envelope: a refusal or capability is NaN or infinite")
    envelope: list[tuple[float, float]] = []
    dominated: list[tuple[float, float]] = []
    for refusal, capability in sorted(pairs, key=lambda p: (-p[0], -p[1])):  # safest first, best of a tie first
        if envelope and capability <= envelope[-1][1]:
            dominated.append((refusal, capability))
        else:
            envelope.append((refusal, capability))
    envelope.reverse()  # refusal rising, capability falling
    return envelope, dominated


def matched_frontier(points: Sequence[Sequence[float]], target: float) -> dict | None:
    """A control family's capability at refusal ``target``, interpolated on its monotone envelope; ``None`` outside.

    ``points`` are the (refusal, capability) pairs of one control family (e.g. learning rates 5e-5 ... 5e-4, or the
    early-stopped checkpoints of standard CoT). The family is read at its best: first the monotone envelope
    (:func:`frontier_envelope`), so along the envelope capability falls as refusal rises. Then the capability at
    ``target`` is linear interpolation (``numpy.interp``) between the two envelope points that bracket it::

        c = c_lo + (target - r_lo) / (r_hi - r_lo) * (c_hi - c_lo),   r_lo <= target <= r_hi

    (a point at exactly ``target`` gives its own capability). A target below the envelope's lowest refusal or above
    its highest returns ``None``: nothing is extrapolated, and a dominated point does not extend the bracket (see
    :func:`safer_control_point` for the one comparison left below the range).
    Returns ``{"target", "capability", "lower": (r_lo, c_lo), "upper": (r_hi, c_hi), "envelope": [...],
    "dominated": [...]}``. An empty list or a non-finite value is an error.
    """
    if not math.isfinite(float(target)):
        raise ValueError("matched_frontier: the target is NaN or infinite")
    envelope, dominated = frontier_envelope(points)
    refusals = np.array([r for r, _ in envelope])
    capabilities = np.array([c for _, c in envelope])
    target = float(target)
    if target < refusals[0] or target > refusals[-1]:
        return None
    upper = int(np.searchsorted(refusals, target, side="left"))
    lower = upper if refusals[upper] == target else upper - 1
    return {
        "target": target,
        "capability": float(np.interp(target, refusals, capabilities)),
        "lower": envelope[lower],
        "upper": envelope[upper],
        "envelope": envelope,
        "dominated": dominated,
    }


def safer_control_point(points: Sequence[Sequence[float]], target: float) -> tuple[float, float] | None:
    """Below a frontier's range: the envelope point that refuses least, if it refuses at least ``target``.

    When a method refuses less than every envelope point of a control family, :func:`matched_frontier` cannot
    interpolate. One comparison stays valid without extrapolating: the envelope's least-refusing point
    ``(r_0, c_0)`` refuses at least as often as the method (``r_0 >= target``); if it is also more capable
    (``c_0 > c``), the method is dominated by a measured control point, which is evidence *against* "beats the
    frontier" (never for it: a method that is more capable there also refuses less). ``None`` when ``target``
    lies inside or above the envelope's range.
    """
    envelope, _ = frontier_envelope(points)
    if not math.isfinite(float(target)):
        raise ValueError("safer_control_point: the target is NaN or infinite")
    return envelope[0] if float(target) < envelope[0][0] else None
