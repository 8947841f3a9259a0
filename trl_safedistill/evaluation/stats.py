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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


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
