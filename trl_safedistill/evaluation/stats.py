"""Percentile bootstrap confidence intervals (Efron & Tibshirani 1993, ch. 13).

For per-item scores x_1..x_n, draw B resamples of size n with replacement, take each resample's mean,
and report the alpha/2 and 1 - alpha/2 quantiles of those B means (95%: alpha = 0.05).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], iters: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """``{"value": mean, "ci": [low, high], "n": n}``; ``value`` is ``None`` for no items, ``ci`` ``None`` when ``iters`` is 0."""
    data = np.asarray([float(v) for v in values], dtype=float)
    if data.size == 0:
        return {"value": None, "ci": None, "n": 0}
    mean = float(data.mean())
    if iters <= 0:
        return {"value": mean, "ci": None, "n": int(data.size)}
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(iters, data.size))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"value": mean, "ci": [float(low), float(high)], "n": int(data.size)}
