"""Formats: which tokens are targets, of which segment, in which order."""

from __future__ import annotations

import pytest

from trl_safedistill.formats import Segment, get_format, render_prompt, tokenize_sequence
from trl_safedistill.records import RationaleRecord

RECORD = RationaleRecord(
    id="r1", question="Sort: pear apple", rationale="apple comes before pear.", answer="apple pear",
    task="word_sorting", description="Sort the words.",
)


def decoded_segments(tokenizer, example):
    """Target text per segment, in order of appearance."""
    spans: list[tuple[int, str]] = []
    for token, segment in zip(example["input_ids"], example["segment_ids"]):
        if segment == Segment.PROMPT:
            continue
        if spans and spans[-1][0] == segment:
            spans[-1] = (segment, spans[-1][1] + tokenizer.decode([token]))
        else:
            spans.append((segment, tokenizer.decode([token])))
    return spans


@pytest.mark.parametrize("chat", [True, False])
def test_standard_targets_rationale_then_answer(tiny_tokenizer, chat):
    (sequence,) = get_format("standard").sequences(RECORD)
    example = tokenize_sequence(tiny_tokenizer, sequence, chat=chat)
    spans = decoded_segments(tiny_tokenizer, example)
    assert [s for s, _ in spans] == [Segment.RATIONALE, Segment.ANSWER]
    assert spans[0][1].strip() == RECORD.rationale
    assert spans[1][1].startswith("\nTherefore, the answer is apple pear.")
    # prompt tokens carry no label; every target token is its own label
    for token, label, segment in zip(example["input_ids"], example["labels"], example["segment_ids"]):
        assert label == (-100 if segment == Segment.PROMPT else token)
    text = tiny_tokenizer.decode(example["input_ids"])
    prompt = render_prompt(tiny_tokenizer, "Task Description:\nSort the words.\nQ: Sort: pear apple", chat=chat)
    assert text.startswith(prompt)
    assert text.endswith("<|im_end|>")  # chat end-of-turn, and the EOS of this tokenizer for plain text


def test_cascade_rationale_step_has_no_answer_and_answer_step_only_answer(tiny_tokenizer):
    rationale_step, answer_step = get_format("cascade").sequences(RECORD)
    first = tokenize_sequence(tiny_tokenizer, rationale_step)
    second = tokenize_sequence(tiny_tokenizer, answer_step)
    spans_first = decoded_segments(tiny_tokenizer, first)
    assert [s for s, _ in spans_first] == [Segment.RATIONALE]
    assert "answer is" not in spans_first[0][1] and "apple pear<" not in spans_first[0][1]
    spans_second = decoded_segments(tiny_tokenizer, second)
    assert [s for s, _ in spans_second] == [Segment.ANSWER]
    assert spans_second[0][1] == " apple pear.<|im_end|>"
    prompt_second = tiny_tokenizer.decode([t for t, s in zip(second["input_ids"], second["segment_ids"]) if s == 0])
    assert prompt_second.endswith("Rationale: apple comes before pear.\nTherefore, the answer is")


def test_cascade_second_pass_prompt_matches_training_prompt(tiny_tokenizer):
    fmt = get_format("cascade")
    first_prompt = fmt.inference_prompt(tiny_tokenizer, RECORD.question, RECORD.description)
    second = tokenize_sequence(tiny_tokenizer, fmt.sequences(RECORD)[1])
    prompt_ids = [t for t, s in zip(second["input_ids"], second["segment_ids"]) if s == 0]
    assert tiny_tokenizer.decode(prompt_ids) == fmt.second_pass_prompt(first_prompt, RECORD.rationale)


def test_answer_first_answer_before_rationale_and_stop_marker(tiny_tokenizer):
    fmt = get_format("answer_first")
    example = tokenize_sequence(tiny_tokenizer, fmt.sequences(RECORD)[0])
    spans = decoded_segments(tiny_tokenizer, example)
    assert [s for s, _ in spans] == [Segment.ANSWER, Segment.RATIONALE]
    assert spans[0][1] == "Therefore, the answer is apple pear."
    assert spans[1][1].startswith(fmt.stop_after_answer)
    first_rationale = example["segment_ids"].index(Segment.RATIONALE)
    last_answer = max(i for i, s in enumerate(example["segment_ids"]) if s == Segment.ANSWER)
    assert last_answer < first_rationale


def test_truncation_keeps_segments_aligned(tiny_tokenizer):
    (sequence,) = get_format("standard").sequences(RECORD)
    full = tokenize_sequence(tiny_tokenizer, sequence)
    cut = tokenize_sequence(tiny_tokenizer, sequence, max_length=len(full["input_ids"]) - 5)
    assert cut["input_ids"] == full["input_ids"][:-5] and cut["segment_ids"] == full["segment_ids"][:-5]


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown distillation format 'foo'"):
        get_format("foo")
