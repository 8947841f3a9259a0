"""Records longer than ``max_length``: an explicit policy, never a silently lost answer."""

from __future__ import annotations

import pytest

from trl_safedistill.dataset import OverlongRecordError, OverlongReport, tokenize_records
from trl_safedistill.formats import Segment, get_format, tokenize_sequence
from trl_safedistill.records import RationaleRecord

SHORT = RationaleRecord(id="short", question="What is 2 + 3?", rationale="2 plus 3 is 5.", answer="5")
LONG = RationaleRecord(
    id="long",
    question="What is 7 times 6?",
    rationale=" ".join(f"Step {i}: 7 times {i} is {7 * i}." for i in range(1, 40)),
    answer="42",
)


def full_length(tokenizer, record, fmt="standard") -> int:
    return max(len(row) for row in tokenize_records([record], tokenizer, fmt)["input_ids"])


def segment_text(tokenizer, row, segment) -> str:
    return tokenizer.decode([t for t, s in zip(row["input_ids"], row["segment_ids"]) if s == segment])


@pytest.fixture
def max_length(tiny_tokenizer):
    """Room for the short record and about half of the long one."""
    length = (full_length(tiny_tokenizer, SHORT, "cascade") + full_length(tiny_tokenizer, LONG, "cascade")) // 2
    assert full_length(tiny_tokenizer, SHORT, "cascade") < length < full_length(tiny_tokenizer, LONG, "standard")
    return length


def test_default_policy_stops_naming_the_record_its_length_and_the_fix(tiny_tokenizer, max_length):
    """Before: the long record was cut at max_length and trained on a rationale without its answer, silently."""
    with pytest.raises(OverlongRecordError) as info:
        tokenize_records([SHORT, LONG], tiny_tokenizer, "standard", max_length=max_length, source="r.jsonl")
    message = str(info.value)
    assert message.startswith("r.jsonl: 1 of 2 records are longer than max_length")
    assert f"record 'long', {full_length(tiny_tokenizer, LONG)} tokens" in message and str(max_length) in message
    assert "overlong: truncate_rationale" in message and "overlong: skip" in message and "\n" not in message


def test_skip_leaves_the_record_out_and_counts_it(tiny_tokenizer, max_length):
    report = OverlongReport("skip", max_length)
    dataset = tokenize_records([SHORT, LONG], tiny_tokenizer, "cascade", max_length=max_length, overlong="skip", report=report)
    assert set(dataset["record_id"]) == {"short"} and len(dataset) == 2
    assert report.count == 1 and report.total == 2 and report.records[0][0] == "long"
    assert report.summary("train dataset").startswith(f"overlong: 1 of 2 records of train dataset longer than max_length {max_length}")


@pytest.mark.parametrize("fmt", ["standard", "cascade", "answer_first"])
def test_truncate_rationale_keeps_the_answer_and_fits(tiny_tokenizer, max_length, fmt):
    report = OverlongReport("truncate_rationale", max_length)
    dataset = tokenize_records([LONG], tiny_tokenizer, fmt, max_length=max_length, overlong="truncate_rationale", report=report)
    assert report.count == 1
    rows = list(dataset)
    assert rows and all(len(row["input_ids"]) <= max_length for row in rows)
    answers = [segment_text(tiny_tokenizer, row, Segment.ANSWER) for row in rows]
    assert any("42." in text for text in answers)  # the whole answer sentence survives
    rationale = next(segment_text(tiny_tokenizer, row, Segment.RATIONALE) for row in rows if Segment.RATIONALE in row["segment_ids"])
    assert "Step 1: 7 times 1 is 7." in rationale and "Step 39" not in rationale  # the head is kept, the tail cut
    assert len(tiny_tokenizer(rationale)["input_ids"]) > max_length // 4  # shortened only as much as needed
    if fmt == "cascade":  # the answer step's prompt carries the same shortened rationale (teacher forcing)
        first, second = rows
        prompt = segment_text(tiny_tokenizer, second, Segment.PROMPT)
        assert segment_text(tiny_tokenizer, first, Segment.RATIONALE).split("<|im_end|>")[0].strip() in prompt


def test_truncate_rationale_refuses_a_record_with_no_room_for_a_rationale(tiny_tokenizer):
    with pytest.raises(OverlongRecordError, match="leave no room for a rationale"):
        tokenize_records([LONG], tiny_tokenizer, "standard", max_length=10, overlong="truncate_rationale")


def test_truncate_is_the_old_cut_counted(tiny_tokenizer, max_length):
    """``truncate`` reproduces runs made before the policy (the demo's): the same rows as cutting at max_length."""
    report = OverlongReport("truncate", max_length)
    dataset = tokenize_records([SHORT, LONG], tiny_tokenizer, "cascade", max_length=max_length, overlong="truncate", report=report)
    fmt = get_format("cascade")
    legacy = [tokenize_sequence(tiny_tokenizer, s, max_length=max_length) for r in (SHORT, LONG) for s in fmt.sequences(r)]
    legacy = [row for row in legacy if any(s != Segment.PROMPT for s in row["segment_ids"][1:])]
    assert dataset["input_ids"] == [row["input_ids"] for row in legacy]
    assert dataset["labels"] == [row["labels"] for row in legacy]
    assert dataset["segment_ids"] == [row["segment_ids"] for row in legacy]
    assert report.count == 1


def test_records_that_fit_are_untouched_by_every_policy(tiny_tokenizer):
    plain = tokenize_records([SHORT, LONG], tiny_tokenizer, "cascade")
    for policy in ("error", "skip", "truncate_rationale", "truncate"):
        report = OverlongReport(policy, 4096)
        dataset = tokenize_records([SHORT, LONG], tiny_tokenizer, "cascade", max_length=4096, overlong=policy, report=report)
        assert dataset["input_ids"] == plain["input_ids"] and report.count == 0


def trainer_args(tmp_path, **kwargs):
    from trl_safedistill import SafeDistillConfig

    return SafeDistillConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=1, report_to=[], use_cpu=True,
        gradient_checkpointing=False, logging_steps=1, save_strategy="no", seed=0, **kwargs,
    )


def test_trainer_stops_on_an_overlong_record_by_default(tmp_path, tiny_tokenizer, tiny_model, max_length):
    from datasets import Dataset

    from trl_safedistill import SafeDistillTrainer

    rows = Dataset.from_list([SHORT.to_dict(), LONG.to_dict()])
    with pytest.raises(OverlongRecordError, match=r"train dataset: 1 of 2 records .* \(first: record 'long'"):
        SafeDistillTrainer(tiny_model, trainer_args(tmp_path, max_length=max_length), train_dataset=rows,
                           processing_class=tiny_tokenizer)


def test_trainer_prints_and_logs_the_count(tmp_path, tiny_tokenizer, tiny_model, max_length, capsys):
    from datasets import Dataset

    from trl_safedistill import SafeDistillTrainer

    rows = Dataset.from_list([SHORT.to_dict(), LONG.to_dict(), {**SHORT.to_dict(), "id": "short-2"}])
    trainer = SafeDistillTrainer(tiny_model, trainer_args(tmp_path, max_length=max_length, overlong="skip"),
                                 train_dataset=rows, processing_class=tiny_tokenizer)
    assert sorted(trainer.train_dataset["record_id"]) == ["short", "short-2"]
    err = capsys.readouterr().err
    assert f"overlong: 1 of 3 records of train dataset longer than max_length {max_length} tokens: left out" in err
    trainer.train()
    assert [entry["overlong/train"] for entry in trainer.state.log_history if "overlong/train" in entry] == [1.0]


def test_pretokenized_rows_follow_the_policy_too(tmp_path, tiny_tokenizer, tiny_model, max_length):
    from trl_safedistill import SafeDistillTrainer

    tokenized = tokenize_records([SHORT, LONG], tiny_tokenizer, "standard")
    with pytest.raises(OverlongRecordError, match="tokenized rows are longer than max_length"):
        SafeDistillTrainer(tiny_model, trainer_args(tmp_path, max_length=max_length), train_dataset=tokenized,
                           processing_class=tiny_tokenizer)
    trainer = SafeDistillTrainer(tiny_model, trainer_args(tmp_path, max_length=max_length, overlong="skip"),
                                 train_dataset=tokenized, processing_class=tiny_tokenizer)
    assert len(trainer.train_dataset) == 1 and trainer.overlong_reports["train"].records[0][0] == "long"
