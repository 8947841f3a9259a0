"""The format-aware lm-eval model ``safedistill-hf``: prompts, two-pass cascade, early stop, token log."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from trl_safedistill.formats import get_format
from trl_safedistill.formats.base import user_text

DOCS = [
    {"question": "not ( True ) and ( True ) is", "description": "Evaluate a Boolean expression.", "prompt_style": "format",
     "options": ["True", "False"], "labels": None, "golds": ["False"], "gold_index": 1},
    {"question": "Is the sky green?\nOptions:\n- Yes\n- No", "description": None, "prompt_style": "format",
     "options": ["Yes", "No"], "labels": None, "golds": ["No"], "gold_index": 1},
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread



def requests(docs, max_gen_toks=5, task="safedistill_bbh_mix"):
    return [
        Instance("generate_until", doc, (user_text(doc["question"], doc.get("description")), {"until": [], "max_gen_toks": max_gen_toks}),
                 i, (task, i, 1))
        for i, doc in enumerate(docs)
    ]


def make_lm(model, tokenizer, fmt, **kwargs):
    from trl_safedistill.evaluation.lm import SafeDistillLM

    return SafeDistillLM(pretrained=model, tokenizer=tokenizer, format=fmt, batch_size=1, **kwargs)


class GenerateSpy:
    """Records every ``generate`` call's input and output, delegating to the real method."""

    def __init__(self, model):
        self.real, self.calls = model.generate, []
        model.generate = self

    def __call__(self, **kwargs):
        output = self.real(**kwargs)
        self.calls.append((kwargs["input_ids"].clone(), output.clone()))
        return output


def test_cascade_issues_exactly_two_generations_per_question_and_feeds_the_first_into_the_second(tiny_model, tiny_tokenizer):
    lm = make_lm(tiny_model, tiny_tokenizer, "cascade")
    spy = GenerateSpy(tiny_model)
    outputs = lm.generate_until(requests(DOCS))
    assert len(spy.calls) == 2 * len(DOCS)
    fmt = get_format("cascade")
    for question_index, doc in enumerate(DOCS):
        (first_in, first_out), (second_in, _) = spy.calls[2 * question_index : 2 * question_index + 2]
        first_prompt = fmt.inference_prompt(tiny_tokenizer, doc["question"], doc["description"])
        assert tiny_tokenizer.decode(first_in[0]) == first_prompt
        rationale = tiny_tokenizer.decode(first_out[0, first_in.shape[1]:], skip_special_tokens=True)
        second_prompt = tiny_tokenizer.decode(second_in[0])
        assert second_prompt == fmt.second_pass_prompt(first_prompt, rationale)
        assert second_prompt.endswith("\nTherefore, the answer is")
        assert outputs[question_index].startswith(rationale.strip())
        assert "\nTherefore, the answer is" in outputs[question_index]
    assert [entry["passes"] for entry in lm.generation_log] == [2, 2]
    assert all(2 <= entry["tokens"] <= 5 + 32 for entry in lm.generation_log)


@pytest.mark.parametrize("fmt_name", ["standard", "answer_first"])
def test_single_pass_formats_generate_once_with_the_training_prompt(tiny_model, tiny_tokenizer, fmt_name):
    lm = make_lm(tiny_model, tiny_tokenizer, fmt_name)
    spy = GenerateSpy(tiny_model)
    lm.generate_until(requests(DOCS[:1]))
    assert len(spy.calls) == 1
    expected = get_format(fmt_name).inference_prompt(tiny_tokenizer, DOCS[0]["question"], DOCS[0]["description"])
    assert tiny_tokenizer.decode(spy.calls[0][0][0]) == expected
    assert lm.generation_log[0]["passes"] == 1


def test_safety_prompts_are_plain_chat_turns(tiny_model, tiny_tokenizer):
    lm = make_lm(tiny_model, tiny_tokenizer, "cascade")
    doc = {"question": "Write a poem", "prompt_style": "plain", "description": None}
    spy = GenerateSpy(tiny_model)
    lm.generate_until(requests([doc], task="safedistill_advbench"))
    assert len(spy.calls) == 1  # no second pass for plain prompts
    rendered = tiny_tokenizer.decode(spy.calls[0][0][0])
    assert rendered == tiny_tokenizer.apply_chat_template([{"role": "user", "content": "Write a poem"}], tokenize=False, add_generation_prompt=True)
    assert "Rationale:" not in rendered


def scripted_generate(tokenizer, text):
    """A ``generate`` that appends the tokens of ``text`` (then EOS) to every prompt."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    def generate(input_ids, max_new_tokens, **kwargs):
        tail = torch.tensor([ids[:max_new_tokens]] * input_ids.shape[0])
        return torch.cat([input_ids, tail], dim=1)

    return generate


def test_answer_first_stops_after_the_answer_and_counts_its_tokens(tiny_model, tiny_tokenizer):
    answer = "Therefore, the answer is False."
    tiny_model.generate = scripted_generate(tiny_tokenizer, answer + "\nExplanation: not True is False, so the and is False.")
    early = make_lm(tiny_model, tiny_tokenizer, "answer_first")
    assert early.generate_until(requests(DOCS[:1], max_gen_toks=64)) == [answer]
    assert early.generation_log[0]["tokens"] == len(tiny_tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1
    late = make_lm(tiny_model, tiny_tokenizer, "answer_first", stop_early=False)
    full = late.generate_until(requests(DOCS[:1], max_gen_toks=64))[0]
    assert full.startswith(answer) and "Explanation:" in full
    assert late.generation_log[0]["tokens"] > early.generation_log[0]["tokens"]


def test_max_gen_toks_cap_and_log_file(tiny_model, tiny_tokenizer, tmp_path):
    log = tmp_path / "tokens.jsonl"
    lm = make_lm(tiny_model, tiny_tokenizer, "standard", max_gen_toks_cap=3, token_log=str(log))
    lm.generate_until(requests(DOCS, max_gen_toks=50))
    assert all(entry["tokens"] <= 3 for entry in lm.generation_log)
    assert len(log.read_text().splitlines()) == 2


def test_multiple_choice_scores_options_after_the_answer_phrase(tiny_model, tiny_tokenizer):
    lm = make_lm(tiny_model, tiny_tokenizer, "standard")
    context = lm.scoring_context("ignored", DOCS[1])
    assert context.endswith("<|im_start|>assistant\nTherefore, the answer is")
    reqs = [Instance("loglikelihood", DOCS[1], ("ctx", f" {option}"), i, ("t", 0, 1)) for i, option in enumerate(DOCS[1]["options"])]
    scores = lm.loglikelihood(reqs, disable_tqdm=True)
    assert len(scores) == 2 and all(isinstance(s[0], float) and s[0] < 0 for s in scores)


def test_a_batch_mixing_safety_and_reasoning_prompts_keeps_each_rule(tiny_model, tiny_tokenizer):
    from trl_safedistill.evaluation.lm import SafeDistillLM

    lm = SafeDistillLM(pretrained=tiny_model, tokenizer=tiny_tokenizer, format="cascade", batch_size=8)
    plain = {"question": "Tell me a joke", "prompt_style": "plain", "description": None}
    spy = GenerateSpy(tiny_model)
    outputs = lm.generate_until(requests([plain, DOCS[0]]))
    assert len(spy.calls) == 3  # one plain generation, two cascade passes
    assert "Therefore, the answer is" not in outputs[0] or outputs[0].count("Therefore") == 0
    assert "\nTherefore, the answer is" in outputs[1]
    assert sorted(entry["passes"] for entry in lm.generation_log) == [1, 2]


def test_a_custom_answer_first_marker_is_the_stop_at_evaluation(tiny_model, tiny_tokenizer):
    """The format factory honours the trained marker at evaluation: generation stops at it, not at the default."""
    answer = "Therefore, the answer is False."
    tiny_model.generate = scripted_generate(tiny_tokenizer, answer + "\nWhy: not True is False.\nExplanation: more.")
    custom = make_lm(tiny_model, tiny_tokenizer, "answer_first", answer_first_marker="\nWhy:")
    assert custom.fmt.stop_after_answer == "\nWhy:"
    assert custom.generate_until(requests(DOCS[:1], max_gen_toks=64)) == [answer]
    default = make_lm(tiny_model, tiny_tokenizer, "answer_first")
    assert default.generate_until(requests(DOCS[:1], max_gen_toks=64))[0].startswith(answer + "\nWhy:")


def test_a_format_option_for_another_format_is_an_error():
    from trl_safedistill.formats import get_format

    assert get_format("answer_first", marker="\nWhy:").marker == "\nWhy:"
    assert get_format("compressed", inference_ratio=0.6).inference_ratio == 0.6
    with pytest.raises(ValueError, match="answer_first format only"):
        get_format("standard", marker="\nWhy:")
    with pytest.raises(ValueError, match="compressed format only"):
        get_format("cascade", inference_ratio=0.5)
