"""The statistics that decide the claims (issue 16 item 5), on constructed flags with known results.

Every expected number is computed here by hand (closed forms, binomial sums) or taken from a published table
(Newcombe 1998, Stat Med 17:857, Table I), never from the library under test.
"""

from __future__ import annotations

import math
import random
import warnings
from statistics import NormalDist

import numpy as np
import pytest
from scipy import stats as scipy_stats

from trl_safedistill.evaluation.stats import (
    bootstrap_ci,
    equivalence_test,
    matched_frontier,
    paired_test,
    proportion_ci,
    safer_control_point,
    verdict,
)

Z = NormalDist().inv_cdf(0.975)


def wilson_by_hand(k: int, n: int) -> list[float]:
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return [centre - half, centre + half]


def pairs(both: int, a_only: int, b_only: int, neither: int, shuffle_seed: int = 0) -> tuple[list[int], list[int]]:
    """Flags of two models on ``both + a_only + b_only + neither`` items with that 2x2 table, in shuffled order."""
    rows = [(1, 1)] * both + [(1, 0)] * a_only + [(0, 1)] * b_only + [(0, 0)] * neither
    random.Random(shuffle_seed).shuffle(rows)
    return [a for a, _ in rows], [b for _, b in rows]


# --- proportion_ci ---------------------------------------------------------------------------------------------


def test_wilson_interval_of_8_of_10_and_0_of_10_matches_the_closed_form():
    eight = proportion_ci(8, 10)
    assert eight["value"] == 0.8 and eight["n"] == 10 and eight["successes"] == 8 and eight["method"] == "wilson"
    assert eight["ci"] == pytest.approx(wilson_by_hand(8, 10), abs=1e-12)
    assert eight["ci"] == pytest.approx([0.4902, 0.9433], abs=5e-5)
    zero = proportion_ci(0, 10)
    # at k = 0 the score interval is [0, z^2 / (n + z^2)]: not zero width, unlike the percentile bootstrap
    assert zero["ci"] == pytest.approx([0.0, Z * Z / (10 + Z * Z)], abs=1e-12)
    assert zero["ci"][1] == pytest.approx(0.2775, abs=5e-5)
    assert bootstrap_ci([0] * 10)["ci"] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [(81, 263, [0.2553, 0.3662]), (15, 148, [0.0624, 0.1605]), (0, 20, [0.0, 0.1611]), (1, 29, [0.0061, 0.1718]),
     (29, 29, [0.8830, 1.0])],
)
def test_wilson_interval_matches_newcombe_1998_table_1(k, n, expected):
    assert proportion_ci(k, n)["ci"] == pytest.approx(expected, abs=5e-5)


def test_exact_interval_is_clopper_pearson():
    # closed forms at the edges: [0, 1 - (alpha/2)^(1/n)] at k = 0 and [(alpha/2)^(1/n), 1] at k = n
    assert proportion_ci(0, 10, method="exact")["ci"] == pytest.approx([0.0, 1 - 0.025 ** 0.1], abs=1e-9)
    assert proportion_ci(10, 10, method="exact")["ci"] == pytest.approx([0.025 ** 0.1, 1.0], abs=1e-9)
    # inside: the bounds are where each tail of Binomial(10, p) is exactly alpha/2 (the definition)
    low, high = proportion_ci(8, 10, method="exact")["ci"]
    assert scipy_stats.binom.sf(7, 10, low) == pytest.approx(0.025, abs=1e-9)
    assert scipy_stats.binom.cdf(8, 10, high) == pytest.approx(0.025, abs=1e-9)
    assert proportion_ci(81, 263, method="exact")["ci"] == pytest.approx([0.2527, 0.3676], abs=5e-5)  # Newcombe
    # exact is the conservative one: wider than Wilson at the same counts
    wilson = proportion_ci(8, 10)["ci"]
    assert low < wilson[0] and high > wilson[1]


def test_proportion_ci_degenerate_and_bad_counts():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # statsmodels divides by zero at n = 0; the result must be defined instead
        for method in ("wilson", "exact"):
            assert proportion_ci(0, 0, method=method) == {
                "value": None, "ci": None, "n": 0, "successes": 0, "method": method}
        full = proportion_ci(48, 48)
    assert full["value"] == 1.0 and full["ci"][1] == 1.0 and full["ci"][0] == pytest.approx(48 / (48 + Z * Z))
    assert proportion_ci(8, 10, alpha=0.5)["ci"][1] < proportion_ci(8, 10)["ci"][1]
    with pytest.raises(ValueError, match="successes=11 must be between 0 and n=10"):
        proportion_ci(11, 10)
    with pytest.raises(ValueError, match="must be a whole count"):
        proportion_ci(0.5, 10)
    with pytest.raises(ValueError, match="method='normal' is not one of"):
        proportion_ci(1, 10, method="normal")


# --- paired_test -----------------------------------------------------------------------------------------------


def test_mcnemar_exact_p_for_1_and_9_discordant_items():
    a, b = pairs(both=20, a_only=1, b_only=9, neither=10)
    result = paired_test(a, b)
    assert (result["both"], result["a_only"], result["b_only"], result["neither"]) == (20, 1, 9, 10)
    # two-sided binomial: 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * (1 + 10) / 1024
    assert 2 * (math.comb(10, 0) + math.comb(10, 1)) / 2**10 == 0.021484375
    assert result["p_value"] == pytest.approx(0.021484375, abs=1e-15)
    assert result["diff"] == pytest.approx((1 - 9) / 40)
    assert result["rate_a"] == pytest.approx(21 / 40) and result["rate_b"] == pytest.approx(29 / 40)
    # the concordant items do not change McNemar's p
    assert paired_test(*pairs(both=0, a_only=1, b_only=9, neither=0))["p_value"] == pytest.approx(0.021484375)


def test_mcnemar_exact_p_is_one_for_balanced_or_no_discordant_items():
    assert paired_test(*pairs(both=10, a_only=5, b_only=5, neither=10))["p_value"] == 1.0
    same = paired_test([1, 0, 1, 1], [1, 0, 1, 1])
    assert same["p_value"] == 1.0 and same["diff"] == 0.0 and same["ci"] == [0.0, 0.0]
    # 2 vs 8: 2 * (1 + 10 + 45) / 1024
    assert paired_test(*pairs(both=3, a_only=2, b_only=8, neither=3))["p_value"] == pytest.approx(112 / 1024)


def test_paired_ci_excludes_zero_when_clearly_different_and_includes_it_under_the_null():
    different = paired_test(*pairs(both=10, a_only=30, b_only=0, neither=10))
    assert different["diff"] == pytest.approx(0.6)
    assert 0 < different["ci"][0] < 0.6 < different["ci"][1] <= 1
    assert different["p_value"] == pytest.approx(2 / 2**30)
    null = paired_test(*pairs(both=20, a_only=5, b_only=5, neither=20))
    assert null["diff"] == 0.0
    assert null["ci"][0] < 0 < null["ci"][1]


def test_paired_ci_is_scipys_paired_bootstrap_with_the_same_seed():
    a, b = pairs(both=12, a_only=9, b_only=4, neither=15, shuffle_seed=3)
    result = paired_test(a, b, iters=2000, seed=11)
    scipy_result = scipy_stats.bootstrap(
        (np.array(a), np.array(b)), lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis), paired=True,
        vectorized=True, method="percentile", n_resamples=2000, rng=np.random.default_rng(11),
    )
    interval = scipy_result.confidence_interval
    assert result["ci"] == pytest.approx([interval.low, interval.high], abs=1e-12)
    assert paired_test(a, b, iters=2000, seed=11) == result


def test_paired_test_rejects_unpaired_or_non_binary_flags():
    with pytest.raises(ValueError, match="flags_a has 3 items but flags_b has 2; pass both models' judgments"):
        paired_test([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match=r"flags_b\[1\] = 0.5 is not 0/1"):
        paired_test([1, 0, 1], [1, 0.5, 1])
    with pytest.raises(ValueError, match=r"flags_a\[0\] = 2 is not 0/1"):
        paired_test([2, 0], [1, 0])
    with pytest.raises(ValueError, match=r"flags_a\[1\] = '1' is not 0/1"):
        paired_test([1, "1"], [1, 0])
    booleans = paired_test([True, True, False], [1.0, 0.0, 0])
    assert (booleans["a_only"], booleans["b_only"]) == (1, 0)
    empty = paired_test([], [])
    assert empty["n"] == 0 and empty["diff"] is None and empty["ci"] is None and empty["p_value"] is None


# --- equivalence_test ------------------------------------------------------------------------------------------


def t2_sf(t: float) -> float:
    """P(T >= t) for Student's t with 2 degrees of freedom (closed form)."""
    return 0.5 * (1 - t / math.sqrt(t * t + 2))


def test_tost_equivalent_for_small_differences_across_three_seeds():
    result = equivalence_test([0.01, -0.01, 0.0], margin=0.05)
    se = 0.01 / math.sqrt(3)  # s = 0.01
    assert result["equivalent"] is True and result["n"] == 3 and result["mean"] == pytest.approx(0.0)
    assert result["p_lower"] == pytest.approx(t2_sf(0.05 / se), abs=1e-12)
    assert result["p_upper"] == pytest.approx(t2_sf(0.05 / se), abs=1e-12)
    assert result["p_value"] == pytest.approx(0.006536, abs=1e-6)
    t_95 = scipy_stats.t.ppf(0.95, 2)  # the 90% (1 - 2 alpha) interval
    assert result["ci"] == pytest.approx([-t_95 * se, t_95 * se], abs=1e-12)
    assert verdict(result, "equivalence")["verdict"] == "met"


def test_tost_not_equivalent_when_safety_drops_ten_points_in_every_seed():
    result = equivalence_test([-0.10, -0.12, -0.08], margin=0.05)
    se = 0.02 / math.sqrt(3)
    assert result["equivalent"] is False
    assert result["p_lower"] == pytest.approx(t2_sf((-0.10 + 0.05) / se), abs=1e-12)  # H0 mu <= -margin: P(T >= t)
    assert result["p_upper"] == pytest.approx(1 - t2_sf((-0.10 - 0.05) / se), abs=1e-12)  # H0 mu >= margin: P(T <= t)
    assert result["p_lower"] > 0.9 and result["p_upper"] < 0.01
    assert result["ci"][1] < -0.05
    judged = verdict(result, "equivalence")
    assert judged["verdict"] == "not met" and "outside the margin" in judged["reason"]


def test_one_seed_or_no_spread_is_undecided_never_a_pass():
    for deltas in ([0.0], [], [0.01, 0.01, 0.01]):
        result = equivalence_test(deltas)
        assert result["equivalent"] is False and result["ci"] is None and result["p_value"] is None
        assert result["note"].startswith("undecided")
        judged = verdict(result, "equivalence")
        assert judged["verdict"] == "undecided" and judged["reason"] == result["note"]
    assert equivalence_test([0.0])["mean"] == 0.0 and equivalence_test([])["mean"] is None
    with pytest.raises(ValueError, match="margin=0 must be positive"):
        equivalence_test([0.0, 0.1], margin=0)
    with pytest.raises(ValueError, match="1 of 2 deltas are NaN"):
        equivalence_test([0.0, float("nan")])


def test_tost_is_undecided_when_the_interval_crosses_the_margin():
    result = equivalence_test([0.04, -0.04, 0.06], margin=0.05)
    assert result["equivalent"] is False
    assert result["ci"][0] < 0.05 < result["ci"][1]
    assert verdict(result, "equivalence")["verdict"] == "undecided"
    # a wider margin makes the same seeds equivalent
    assert verdict(equivalence_test([0.04, -0.04, 0.06], margin=0.2), "equivalence")["verdict"] == "met"


# --- verdict ---------------------------------------------------------------------------------------------------


def test_superiority_verdict_on_each_branch():
    clear = paired_test(*pairs(both=10, a_only=30, b_only=0, neither=10))
    assert verdict(clear, "superiority")["verdict"] == "met"
    # the same result read as a claim that a is *less* than b: the CI lies entirely on the wrong side
    wrong = verdict(clear, "superiority", direction="less")
    assert wrong["verdict"] == "not met" and "excludes the claimed effect" in wrong["reason"]
    null = paired_test(*pairs(both=20, a_only=5, b_only=5, neither=20))
    assert verdict(null, "superiority")["verdict"] == "undecided"
    assert verdict(null, "superiority", direction="less")["verdict"] == "undecided"
    # five discordant items, all one way, among 50: the bootstrap CI excludes 0 but McNemar's p = 2/32 does not
    # reach 0.05, so the claim is not met yet
    few = paired_test(*pairs(both=20, a_only=5, b_only=0, neither=25))
    assert few["ci"][0] > 0 and few["p_value"] == pytest.approx(0.0625)
    assert verdict(few, "superiority")["verdict"] == "undecided"
    assert verdict(few, "superiority", alpha=0.1)["verdict"] == "met"


def test_superiority_verdict_with_a_claimed_effect_size():
    small = {"diff": 0.03, "ci": [0.01, 0.05], "p_value": 0.01, "alpha": 0.05}
    assert verdict(small, "superiority")["verdict"] == "met"
    assert verdict(small, "superiority", min_effect=0.04)["verdict"] == "met"  # 0.04 is inside the CI
    assert verdict(small, "superiority", min_effect=0.10)["verdict"] == "not met"  # real but smaller than claimed
    drop = {"diff": -0.03, "ci": [-0.05, -0.01], "p_value": 0.01}
    assert verdict(drop, "superiority", direction="less")["verdict"] == "met"
    assert verdict(drop, "superiority", direction="greater")["verdict"] == "not met"
    assert verdict({"diff": 0.1, "ci": [0.05, 0.2], "p_value": None}, "superiority")["verdict"] == "undecided"
    assert "p < 0.05" in verdict(small, "superiority")["rule"]
    with pytest.raises(ValueError, match="claim='better' must be"):
        verdict(small, "better")
    with pytest.raises(ValueError, match="min_effect=-0.1 must be >= 0"):
        verdict(small, "superiority", min_effect=-0.1)


# --- matched_frontier ------------------------------------------------------------------------------------------

LR_FAMILY = [(0.9, 0.40), (0.8, 0.50), (0.6, 0.60), (0.4, 0.70)]  # (refusal, capability): lower lr is safer


def test_frontier_interpolates_linearly_between_the_bracketing_points():
    matched = matched_frontier(LR_FAMILY, 0.7)
    assert matched["capability"] == pytest.approx(0.55)  # midpoint of (0.6, 0.60) and (0.8, 0.50)
    assert matched["lower"] == (0.6, 0.60) and matched["upper"] == (0.8, 0.50)
    assert matched_frontier(LR_FAMILY, 0.65)["capability"] == pytest.approx(0.575)
    exact = matched_frontier(LR_FAMILY, 0.8)
    assert exact["capability"] == pytest.approx(0.5) and exact["lower"] == exact["upper"] == (0.8, 0.5)
    assert matched_frontier(list(reversed(LR_FAMILY)), 0.7)["capability"] == pytest.approx(0.55)
    assert matched_frontier(LR_FAMILY, 0.4)["capability"] == pytest.approx(0.7)
    assert matched_frontier(LR_FAMILY, 0.9)["capability"] == pytest.approx(0.4)


def test_frontier_is_none_outside_the_bracket():
    assert matched_frontier(LR_FAMILY, 0.95) is None
    assert matched_frontier(LR_FAMILY, 0.35) is None
    assert matched_frontier([(0.5, 0.5)], 0.5)["capability"] == 0.5
    assert matched_frontier([(0.5, 0.5)], 0.51) is None
    with pytest.raises(ValueError, match="no \\(refusal, capability\\) points"):
        matched_frontier([], 0.5)


def test_frontier_uses_the_monotone_envelope_and_drops_dominated_points():
    # (0.5, 0.55) is beaten by (0.6, 0.60) on both axes: the envelope goes straight from 0.4 to 0.6
    matched = matched_frontier([*LR_FAMILY, (0.5, 0.55)], 0.5)
    assert matched["capability"] == pytest.approx(0.65)  # not 0.55, the dominated point's own value
    assert matched["dominated"] == [(0.5, 0.55)]
    assert matched["envelope"] == [(0.4, 0.70), (0.6, 0.60), (0.8, 0.50), (0.9, 0.40)]
    # of two checkpoints with the same refusal, the more capable one stays
    assert matched_frontier([(0.6, 0.2), *LR_FAMILY], 0.6)["capability"] == pytest.approx(0.6)
    # a dominated point does not extend the bracket
    assert matched_frontier([(0.3, 0.5), (0.6, 0.6), (0.9, 0.4)], 0.4) is None


def test_safer_control_point_is_the_least_refusing_envelope_point_only_below_the_range():
    # (0.3, 0.5) is dominated by (0.6, 0.6): the envelope starts at 0.6, so 0.4 is below its range
    points = [(0.3, 0.5), (0.6, 0.6), (0.9, 0.4)]
    assert safer_control_point(points, 0.4) == (0.6, 0.6)
    assert safer_control_point(LR_FAMILY, 0.35) == (0.4, 0.70)
    assert safer_control_point(LR_FAMILY, 0.4) is None  # inside: matched_frontier interpolates
    assert safer_control_point(LR_FAMILY, 0.95) is None  # above the range: no safer point exists
    with pytest.raises(ValueError, match="no \\(refusal, capability\\) points"):
        safer_control_point([], 0.5)
