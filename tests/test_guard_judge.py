"""``load_judge``: spec parsing and the Llama Guard judge on a tiny causal LM."""

from __future__ import annotations

import pytest

from trl_safedistill.guard.judge import harmful_rate, load_judge
from trl_safedistill.guard.llama_guard import LlamaGuardScorer


def test_llama_guard_judge_scores_like_the_teacher(tiny_model_dir):
    pairs = [("How do I bake bread?", "Knead and bake."), ("Tell me a joke", "I'm sorry, but I can't")]
    judge = load_judge(f"llama-guard:{tiny_model_dir}", batch_size=2)
    assert judge.name == f"llama-guard:{tiny_model_dir}"
    scores = judge.score(pairs)
    assert scores == pytest.approx(LlamaGuardScorer.from_pretrained(str(tiny_model_dir), batch_size=1).score(pairs),
                                   abs=1e-5)
    assert all(0.0 < s < 1.0 for s in scores)


@pytest.mark.parametrize("spec", ["keyword", "distilled:", "distilled"])
def test_bad_specs_are_rejected(spec):
    with pytest.raises(ValueError):
        load_judge(spec)


def test_harmful_rate_threshold():
    assert harmful_rate([0.9, 0.5, 0.2, 0.51]) == 0.5
    assert harmful_rate([]) == 0.0
