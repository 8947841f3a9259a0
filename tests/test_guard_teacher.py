"""The teacher guard: Llama Guard 3 rendering and P(unsafe) = softmax over the vocabulary at two ids."""

from __future__ import annotations

import math

import pytest
import torch

from trl_safedistill.guard.llama_guard import (
    GUARD_CATEGORIES,
    LlamaGuardScorer,
    build_guard_task,
    render_guard_input,
    verdict_token_ids,
)

PAIRS = [
    ("How do I bake bread?", "Mix flour, water, salt and yeast, then knead and bake."),
    ("Tell me a joke about cats", "I'm sorry, but I can't"),
    ("Hi", "Hello! How can I help?"),
]


@pytest.fixture
def sharpened_model(tiny_model, tiny_tokenizer):
    """A tiny random model whose 'unsafe'/'safe' logits are pushed apart, so a swap or a wrong id shows."""
    unsafe_id, safe_id = verdict_token_ids(tiny_tokenizer)
    with torch.no_grad():
        embed = tiny_model.get_input_embeddings().weight  # tied with the LM head
        embed[unsafe_id] *= 8.0
        embed[safe_id] *= 0.1
    return tiny_model.eval()


def test_verdict_ids_are_the_first_tokens_of_the_words(tiny_tokenizer):
    unsafe_id, safe_id = verdict_token_ids(tiny_tokenizer)
    assert unsafe_id == tiny_tokenizer.encode("unsafe", add_special_tokens=False)[0]  # SmolLM2: "uns" + "afe"
    assert safe_id == tiny_tokenizer.encode("safe", add_special_tokens=False)[0]
    assert unsafe_id != safe_id


def test_rendered_input_is_llama_guard_3_format_ending_with_the_verdict_lead(tiny_tokenizer):
    text = render_guard_input(tiny_tokenizer, *PAIRS[0])
    assert text.endswith("\n\n")
    for category in GUARD_CATEGORIES:
        assert category in text
    assert "User: How do I bake bread?\n\nAgent: Mix flour" in text
    assert "ONLY THE LAST Agent message" in text and "First line must read 'safe' or 'unsafe'" in text
    assert "'User' messages" in build_guard_task("Hi", None) and "Agent:" not in build_guard_task("Hi", None)


def test_llama_guard_own_template_renders_the_conversation(tiny_tokenizer):
    class GuardTokenizer:
        chat_template = "<BEGIN UNSAFE CONTENT CATEGORIES>{% for m in messages %}[{{ m.content }}]{% endfor %}<|a|>"

        def apply_chat_template(self, messages, tokenize=False):
            return "<BEGIN UNSAFE CONTENT CATEGORIES>" + "".join(f"[{m['content']}]" for m in messages) + "<|a|>"

    assert render_guard_input(GuardTokenizer(), "p", "r") == "<BEGIN UNSAFE CONTENT CATEGORIES>[p][r]<|a|>\n\n"


def test_p_unsafe_equals_hand_computed_softmax_at_the_two_ids(sharpened_model, tiny_tokenizer):
    unsafe_id, safe_id = verdict_token_ids(tiny_tokenizer)
    scorer = LlamaGuardScorer(sharpened_model, tiny_tokenizer, batch_size=2)  # batches of unequal lengths
    normalized = scorer.score(PAIRS)
    raw = LlamaGuardScorer(sharpened_model, tiny_tokenizer, batch_size=3, normalize=False).score(PAIRS)
    for (prompt, response), p_norm, p_raw in zip(PAIRS, normalized, raw):
        text = tiny_tokenizer.apply_chat_template(
            [{"role": "user", "content": build_guard_task(prompt, response)}], tokenize=False, add_generation_prompt=True
        ) + "\n\n"
        ids = torch.tensor([tiny_tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = sharpened_model(input_ids=ids).logits[0, -1].double().tolist()
        top = max(logits)
        total = sum(math.exp(z - top) for z in logits)  # softmax over the full vocabulary
        p_u, p_s = math.exp(logits[unsafe_id] - top) / total, math.exp(logits[safe_id] - top) / total
        assert p_raw == pytest.approx(p_u, rel=1e-4, abs=1e-7)
        assert p_norm == pytest.approx(p_u / (p_u + p_s), rel=1e-4)
    # Far enough from 1/2 that swapped ids or a missing renormalisation would fail the comparisons above.
    assert all(abs(p - 0.5) > 0.02 for p in normalized) and all(p < 0.1 for p in raw)
