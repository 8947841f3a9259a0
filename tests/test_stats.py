"""bootstrap_ci (scipy's percentile bootstrap) against hand-computed bootstrap quantiles and its degenerate cases.

For 0/1 flags with k ones out of n, a resample's mean is j/n with j ~ Binomial(n, k/n), so the percentile
interval's bounds are quantiles of that binomial, computable by hand. The resample counts below put the
2.5% / 97.5% points far from any step of the binomial CDF, so the bounds are exact, not approximate.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from trl_safedistill.evaluation.stats import bootstrap_ci


def test_half_of_ten_flags_gives_the_binomial_quantiles():
    # j ~ Bin(10, 0.5): P(j <= 1) = 0.011 < 0.025 < P(j <= 2) = 0.055, so the 2.5% point is 2/10;
    # symmetric: the 97.5% point is 8/10.
    result = bootstrap_ci([1, 0] * 5, iters=2000)
    assert result["value"] == 0.5 and result["n"] == 10
    assert result["ci"] == pytest.approx([0.2, 0.8])


def test_one_of_four_flags_gives_the_binomial_quantiles():
    # j ~ Bin(4, 0.25): P(j = 0) = 0.316 > 0.025, so the low bound is 0; P(j <= 2) = 0.949 < 0.975 < P(j <= 3)
    # = 0.996, so the high bound is 3/4.
    result = bootstrap_ci([1, 0, 0, 0], iters=4000, seed=7)
    assert result["value"] == 0.25
    assert result["ci"] == pytest.approx([0.0, 0.75])


def test_large_sample_matches_the_normal_approximation():
    # n = 400, p = 0.3: the bootstrap distribution of the mean is close to N(p, p(1-p)/n); half-width 1.96 * se.
    flags = [1] * 120 + [0] * 280
    result = bootstrap_ci(flags, iters=5000, seed=1)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 400)
    assert result["value"] == pytest.approx(0.3)
    assert result["ci"][0] == pytest.approx(0.3 - half, abs=0.006)
    assert result["ci"][1] == pytest.approx(0.3 + half, abs=0.006)


def test_alpha_sets_the_confidence_level_and_n_shrinks_the_interval():
    wide = bootstrap_ci([1, 0] * 50, iters=3000, alpha=0.05)
    narrow = bootstrap_ci([1, 0] * 50, iters=3000, alpha=0.5)
    assert wide["ci"][0] < narrow["ci"][0] < 0.5 < narrow["ci"][1] < wide["ci"][1]
    large = bootstrap_ci([1, 0] * 200, iters=2000)
    small = bootstrap_ci([1, 0] * 5, iters=2000)
    assert (large["ci"][1] - large["ci"][0]) < (small["ci"][1] - small["ci"][0]) / 3


def test_seed_makes_the_interval_reproducible():
    scores = np.random.default_rng(3).random(30).tolist()
    assert bootstrap_ci(scores, 500, seed=4) == bootstrap_ci(scores, 500, seed=4)
    assert bootstrap_ci(scores, 500, seed=4)["ci"] != bootstrap_ci(scores, 500, seed=5)["ci"]
    assert bootstrap_ci(scores, 500, seed=4)["value"] == bootstrap_ci(scores, 500, seed=5)["value"]


def test_degenerate_inputs_have_defined_results_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's DegenerateDataWarning / RuntimeWarning would fail here
        assert bootstrap_ci([]) == {"value": None, "ci": None, "n": 0}
        assert bootstrap_ci([1, 1, 1]) == {"value": 1.0, "ci": [1.0, 1.0], "n": 3}
        assert bootstrap_ci([0.0] * 5) == {"value": 0.0, "ci": [0.0, 0.0], "n": 5}
        assert bootstrap_ci([0.25]) == {"value": 0.25, "ci": [0.25, 0.25], "n": 1}  # scipy itself refuses n = 1
        assert bootstrap_ci([1, 0, 1], iters=0) == {"value": pytest.approx(2 / 3), "ci": None, "n": 3}


def test_non_finite_values_are_an_error():
    with pytest.raises(ValueError, match="1 of 3 values are NaN or infinite"):
        bootstrap_ci([1.0, float("nan"), 0.0])
