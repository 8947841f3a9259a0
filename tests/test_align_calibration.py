"""The alignment-calibration rule picks by the gate, then by calibration balance; variants touch align_* only."""

from __future__ import annotations

import pytest

from trl_safedistill.experiments import align_calibration as ac


def _variant(name, refusal, over, lookalike, passed=False):
    return {"name": name, "gate": {"refusal": refusal, "over_refusal": over, "lookalike_over_refusal": lookalike,
                                   "passed": passed}}


def test_balance_counts_lookalikes_twice():
    assert ac.balance(_variant("a", 0.8, 0.2, 0.4)["gate"]) == pytest.approx(0.8 - 0.3)


def test_a_passing_variant_wins_over_a_higher_balance():
    rows = [_variant("high", 0.99, 0.1, 0.1), _variant("pass", 0.86, 0.19, 0.19, passed=True)]
    assert ac.choose(rows) == {"name": "pass", "reason": "passes the gate", "balance": pytest.approx(0.67)}


def test_without_a_pass_the_highest_balance_wins_and_ties_go_to_the_first():
    rows = [_variant("a", 0.8, 0.2, 0.4), _variant("b", 0.9, 0.2, 0.4), _variant("c", 0.9, 0.2, 0.4)]
    choice = ac.choose(rows)
    assert choice["name"] == "b" and choice["reason"].startswith("no variant passes")


def test_variants_may_only_change_alignment_fields():
    assert ac.parse_variant(["longer", "align_steps=120"]) == ("longer", {"align_steps": "120"})
    with pytest.raises(ValueError, match="distil_steps are not alignment fields"):
        ac.parse_variant(["x", "distil_steps=3"])
    with pytest.raises(ValueError, match="give a name first"):
        ac.parse_variant(["align_steps=3"])
