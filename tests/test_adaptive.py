"""Adaptive thinking: the soft-prompt router, the mixed ``adaptive`` format, routed evaluation, save/load."""

from __future__ import annotations

import random

import pytest
import torch
from lm_eval.api.instance import Instance

from trl_safedistill.formats import MODE_TAGS, AdaptiveFormat, Segment, get_format, tokenize_sequence
from trl_safedistill.formats.base import user_text
from trl_safedistill.formats.router import SoftPromptRouter, router_prompt, train_router
from trl_safedistill.records import RationaleRecord

from .conftest import make_tiny_model

MARKER = "\nExplanation:"
RECORDS = [
    RationaleRecord("easy-1", "Is 2 even?", "2 divides by 2 with no remainder.", "Yes", description="Parity."),
    RationaleRecord("hard-1", "Is 91 prime?", "91 = 7 * 13, so it has divisors other than 1 and itself.", "No"),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread


def toy_questions(count: int, seed: int) -> tuple[list[str], list[str]]:
    """Questions whose mode is given by one word (apple: answer first, zebra: think first), filler drawn at random."""
    rng = random.Random(seed)
    filler = ["red", "blue", "green", "small", "large", "old", "new", "fast", "slow", "round"]
    questions, modes = [], []
    for index in range(count):
        hard = index % 2 == 1
        questions.append(f"{' '.join(rng.choice(filler) for _ in range(4))} {'zebra' if hard else 'apple'}?")
        modes.append("standard" if hard else "answer_first")
    return questions, modes


def accuracy(decided: list[str], labels: list[str]) -> float:
    return sum(d == label for d, label in zip(decided, labels)) / len(labels)


# ------------------------------------------------------------------------------------------------- router
def test_router_decision_is_learnt_from_its_trained_parameters(tiny_model, tiny_tokenizer):
    train_q, train_modes = toy_questions(48, seed=0)
    test_q, test_modes = toy_questions(16, seed=1)
    train_prompts = [router_prompt(tiny_tokenizer, q) for q in train_q]
    test_prompts = [router_prompt(tiny_tokenizer, q) for q in test_q]
    router = SoftPromptRouter.for_model(tiny_model, num_virtual_tokens=4, seed=0)
    untrained = router.decide(tiny_model, tiny_tokenizer, test_prompts)
    assert set(untrained) == {"standard"}  # zero head: a tie, think-first, the plain CoT student
    assert accuracy(untrained, test_modes) == 0.5
    weights_before = [p.detach().clone() for p in tiny_model.parameters()]

    stats = train_router(router, tiny_model, tiny_tokenizer, train_prompts, train_modes, steps=100, learning_rate=5e-2)

    assert stats["accuracy"] >= 0.9
    assert accuracy(router.decide(tiny_model, tiny_tokenizer, test_prompts), test_modes) >= 0.9  # unseen questions
    assert all(torch.equal(a, b) for a, b in zip(weights_before, tiny_model.parameters()))  # the student stays frozen
    assert all(p.requires_grad for p in tiny_model.parameters())  # and its flags are restored


# ------------------------------------------------------------------------------------------------- format
def test_mixed_format_puts_the_mode_tag_then_the_targets_in_that_modes_order(tiny_tokenizer):
    fmt = get_format("adaptive", marker=MARKER, modes={"easy-1": "answer_first", "hard-1": "standard"})
    (easy,), (hard,) = fmt.sequences(RECORDS[0]), fmt.sequences(RECORDS[1])
    assert easy.assistant_prefix == MODE_TAGS["answer_first"] and hard.assistant_prefix == MODE_TAGS["standard"]
    assert [(p.segment, p.text) for p in easy.targets] == [
        (Segment.ANSWER, "Therefore, the answer is Yes."), (Segment.RATIONALE, f"{MARKER} {RECORDS[0].rationale}")]
    assert [(p.segment, p.text) for p in hard.targets] == [
        (Segment.RATIONALE, RECORDS[1].rationale), (Segment.ANSWER, "\nTherefore, the answer is No.")]
    for sequence, record in ((easy, RECORDS[0]), (hard, RECORDS[1])):
        example = tokenize_sequence(tiny_tokenizer, sequence)
        text = tiny_tokenizer.decode(example["input_ids"])
        tag = text.index(sequence.assistant_prefix)
        first_target = next(i for i, s in enumerate(example["segment_ids"]) if s != Segment.PROMPT)
        prompt_text = tiny_tokenizer.decode(example["input_ids"][:first_target])
        assert prompt_text.endswith(sequence.assistant_prefix)  # the tag is prompt: no loss on it
        assert tag < text.index(record.rationale[:20]) and tag < text.index(f"answer is {record.answer}.")
    easy_text = tiny_tokenizer.decode(tokenize_sequence(tiny_tokenizer, easy)["input_ids"])
    hard_text = tiny_tokenizer.decode(tokenize_sequence(tiny_tokenizer, hard)["input_ids"])
    assert easy_text.index("answer is Yes.") < easy_text.index(RECORDS[0].rationale[:20])
    assert hard_text.index(RECORDS[1].rationale[:20]) < hard_text.index("answer is No.")


def test_unlabelled_records_are_think_first_and_a_missing_label_is_an_error():
    assert AdaptiveFormat().sequences(RECORDS[0])[0].assistant_prefix == MODE_TAGS["standard"]
    with pytest.raises(ValueError, match="record 'hard-1' has no router label"):
        AdaptiveFormat(modes={"easy-1": "answer_first"}).sequences(RECORDS[1])
    with pytest.raises(ValueError, match="unknown mode"):
        AdaptiveFormat(modes={"easy-1": "sideways"})
    with pytest.raises(ValueError, match="adaptive format only"):
        get_format("standard", modes={})


# --------------------------------------------------------------------------------------------- evaluation
DOCS = [{"question": r.question, "description": r.description, "prompt_style": "format", "options": [],
         "labels": None, "golds": [r.answer], "gold_index": 0} for r in RECORDS]


def requests(docs, max_gen_toks=6):
    return [Instance("generate_until", doc, (user_text(doc["question"], doc.get("description")),
                                             {"until": [], "max_gen_toks": max_gen_toks}), i, ("bbh", i, 1))
            for i, doc in enumerate(docs)]


class GenerateSpy:
    """Records every ``generate`` call's prompts and stop strings, delegating to the real method."""

    def __init__(self, model):
        self.real, self.calls = model.generate, []
        model.generate = self

    def __call__(self, **kwargs):
        stops = [c.sequence for c in (kwargs.get("stopping_criteria") or [])]
        rows = [ids[mask.bool()] for ids, mask in zip(kwargs["input_ids"], kwargs["attention_mask"])]  # padding off
        self.calls.append((rows, stops))
        return self.real(**kwargs)


def biased_router(model, mode: str) -> SoftPromptRouter:
    router = SoftPromptRouter.for_model(model, num_virtual_tokens=2)
    with torch.no_grad():
        router.head.bias.copy_(torch.tensor([1.0, 0.0] if mode == "standard" else [0.0, 1.0]))
    return router


@pytest.mark.parametrize("mode", ["standard", "answer_first"])
def test_the_evaluation_path_prompts_and_stops_each_routed_mode_as_trained(tiny_model, tiny_tokenizer, tmp_path, mode):
    from trl_safedistill.evaluation.lm import SafeDistillLM

    biased_router(tiny_model, mode).save_pretrained(tmp_path / "router")
    lm = SafeDistillLM(pretrained=tiny_model, tokenizer=tiny_tokenizer, format="adaptive", batch_size=2,
                       router=str(tmp_path / "router"))
    spy = GenerateSpy(tiny_model)
    lm.generate_until(requests(DOCS))
    fmt = get_format("adaptive")
    assert len(spy.calls) == 1
    input_ids, stops = spy.calls[0]
    prompts = [tiny_tokenizer.decode(row) for row in input_ids]
    assert prompts == [fmt.mode_prompt(tiny_tokenizer, d["question"], d["description"], mode) for d in DOCS]
    assert prompts[0].endswith(MODE_TAGS[mode])
    assert (MARKER in stops) == (mode == "answer_first")  # answer first stops right after the answer
    assert [entry["mode"] for entry in lm.generation_log] == [mode, mode]


def test_mixed_routing_generates_each_mode_with_its_prompt_and_stop_and_keeps_question_order(tiny_model, tiny_tokenizer):
    from trl_safedistill.evaluation.scoring import routed_generate

    fmt = get_format("adaptive")
    spy = GenerateSpy(tiny_model)
    questions = [(d["question"], d["description"]) for d in DOCS]
    results = routed_generate(tiny_model, tiny_tokenizer, None, fmt, questions, ["<|im_end|>"], 4, chat=True,
                              modes=["answer_first", "standard"])
    assert [mode for _, _, mode in results] == ["answer_first", "standard"]
    (first_ids, first_stops), (second_ids, second_stops) = spy.calls
    assert tiny_tokenizer.decode(first_ids[0]) == fmt.mode_prompt(tiny_tokenizer, *questions[0], "answer_first", True)
    assert tiny_tokenizer.decode(second_ids[0]) == fmt.mode_prompt(tiny_tokenizer, *questions[1], "standard", True)
    assert MARKER in first_stops and MARKER not in second_stops
    no_early = routed_generate(tiny_model, tiny_tokenizer, None, fmt, questions[:1], [], 4, chat=True,
                               stop_early=False, modes=["answer_first"])
    assert len(no_early) == 1 and MARKER not in spy.calls[-1][1]


def test_an_adaptive_student_without_a_router_is_refused(tiny_model, tiny_tokenizer, tmp_path):
    from trl_safedistill.evaluation.lm import SafeDistillLM

    with pytest.raises(ValueError, match="needs the student's router"):
        SafeDistillLM(pretrained=tiny_model, tokenizer=tiny_tokenizer, format="adaptive", router=str(tmp_path))
    with pytest.raises(ValueError, match="format=adaptive only"):
        SafeDistillLM(pretrained=tiny_model, tokenizer=tiny_tokenizer, format="standard", router=str(tmp_path))


# -------------------------------------------------------------------------------------------- save / load
def test_trainer_labels_trains_and_saves_router_with_the_adapter_and_the_round_trip_routes_the_same(
        tiny_tokenizer, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig, PeftModel

    from trl_safedistill import SafeDistillConfig, SafeDistillTrainer
    from trl_safedistill.data.bbh_cot import load_bbh_cot
    from trl_safedistill.evaluation.lm import SafeDistillLM
    from trl_safedistill.formats import read_format_settings
    from trl_safedistill.formats.router import ROUTER_DIR

    records = load_bbh_cot("train")[::200][:8]
    args = SafeDistillConfig(
        str(tmp_path / "out"), distill_format="adaptive", router_label_rule="answer_loss", router_steps=6,
        router_batch_size=4, max_steps=2, per_device_train_batch_size=2, max_length=512, overlong="skip",
        learning_rate=1e-3, report_to="none", use_cpu=True, save_strategy="no", logging_steps=1, seed=3,
    )
    base = make_tiny_model(len(tiny_tokenizer))
    trainer = SafeDistillTrainer(base, args, train_dataset=Dataset.from_list([r.to_dict() for r in records]),
                                 processing_class=tiny_tokenizer,
                                 peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    modes = trainer.router_modes
    assert set(modes) == {r.id for r in records} and set(modes.values()) <= {"standard", "answer_first"}
    for row in trainer.train_dataset:  # every row is rendered after its record's label
        assert MODE_TAGS[modes[row["record_id"]]] in tiny_tokenizer.decode(row["input_ids"])
    trainer.train()
    assert any("router/accuracy" in entry for entry in trainer.state.log_history)
    trainer.save_model(str(tmp_path / "student"))
    student = tmp_path / "student"
    assert read_format_settings(student) == {"format": "adaptive", "answer_phrase": "Therefore, the answer is",
                                             "marker": MARKER}
    assert (student / "adapter_model.safetensors").is_file() and (student / ROUTER_DIR / "router.safetensors").is_file()

    probe, _ = toy_questions(12, seed=5)
    prompts = [router_prompt(tiny_tokenizer, q) for q in probe] + [router_prompt(tiny_tokenizer, r.question, r.description)
                                                                   for r in records]
    trained_model = trainer.accelerator.unwrap_model(trainer.model)
    before = trainer.router.decide(trained_model, tiny_tokenizer, prompts)
    with torch.no_grad():
        logits_before = trainer.router.logits_from_ids(trained_model, trainer.router.encode(tiny_tokenizer, prompts[:4]))

    reloaded_model = PeftModel.from_pretrained(make_tiny_model(len(tiny_tokenizer)), str(student))
    reloaded_router = SoftPromptRouter.from_pretrained(student / ROUTER_DIR)
    assert reloaded_router.label_rule == "answer_loss"
    assert reloaded_router.decide(reloaded_model, tiny_tokenizer, prompts) == before
    with torch.no_grad():
        logits_after = reloaded_router.logits_from_ids(reloaded_model, reloaded_router.encode(tiny_tokenizer, prompts[:4]))
    torch.testing.assert_close(logits_after, logits_before)
    assert not torch.equal(logits_after, torch.zeros_like(logits_after))  # a trained head, not the zero start

    lm = SafeDistillLM(pretrained=make_tiny_model(len(tiny_tokenizer)), tokenizer=tiny_tokenizer, format="adaptive",
                       adapter=str(student), batch_size=1)  # finds router/ beside the adapter
    assert lm.router.decide(lm.model, tiny_tokenizer, prompts) == before
