"""Importing teacher-output collections in their common layouts."""

from __future__ import annotations

import json

import pytest

from trl_safedistill.data.importers import load_teacher_outputs
from trl_safedistill.records import LoadReport, RecordError

BBH_LIKE = [
    {"input": "not ( True ) and ( True ) is", "target": "False",
     "prediction": "not True = False. False and True = False. So the answer is False."},
    {"input": "True or False is", "target": "True",
     "prediction": "True or False = True. So the answer is False."},  # the teacher got it wrong
    {"input": "Which is blue?\nOptions:\n(A) sky\n(B) grass", "target": "(A)",
     "prediction": "The sky is blue.\nSo the answer is (A)."},
]


def test_outputs_key_layout_keeps_only_correct_chains(tmp_path):
    path = tmp_path / "boolean_expressions.json"
    path.write_text(json.dumps({"canary": "x", "outputs": BBH_LIKE}, indent=2))
    report = LoadReport()
    records = load_teacher_outputs(path, report=report)
    assert [r.id for r in records] == ["boolean_expressions-0", "boolean_expressions-2"]
    assert records[0].rationale == "not True = False. False and True = False." and records[0].answer == "False"
    assert records[1].answer == "(A)" and records[1].task == "boolean_expressions"
    assert report.kept == 2 and report.skipped == 1 and report.reasons["target: wrong answer"] == 1
    assert len(load_teacher_outputs(path, require_correct=False)) == 3


def test_top_level_list_and_examples_key(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(BBH_LIKE))
    assert len(load_teacher_outputs(listed, task="bool")) == 2
    examples = tmp_path / "ex.json"
    examples.write_text(json.dumps({"examples": BBH_LIKE[:1]}))
    (record,) = load_teacher_outputs(examples)
    assert record.id == "ex-0"


def test_jsonl_cot_strings_with_a_custom_answer_phrase(tmp_path):
    path = tmp_path / "cots.jsonl"
    rows = [
        {"id": "a", "question": "2+3?", "output": "2 + 3 = 5.\nThe final answer: 5"},
        {"id": "b", "question": "2+2?", "output": "2 + 2 = 4.\nTherefore, the answer is 4."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_teacher_outputs(path, answer_phrases=("The final answer:", "Therefore, the answer is"))
    assert [(r.id, r.rationale, r.answer) for r in records] == [("a", "2 + 3 = 5.", "5"), ("b", "2 + 2 = 4.", "4")]
    split = tmp_path / "split.jsonl"  # rationale/answer layout passes through unchanged
    split.write_text(json.dumps({"id": "c", "question": "q", "rationale": "r", "answer": "x"}) + "\n")
    assert load_teacher_outputs(split)[0].rationale == "r"


def test_a_bad_row_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.json"
    broken = [BBH_LIKE[0], {"input": "x is", "target": "True", "prediction": "no conclusion here"}]
    path.write_text(json.dumps({"outputs": broken}, indent=2))
    text = path.read_text().splitlines()
    line = next(i for i, row in enumerate(text, start=1) if '"input": "x is"' in row) - 1  # the row's "{"
    with pytest.raises(RecordError) as error:
        load_teacher_outputs(path)
    assert str(error.value).startswith(f"{path}:{line}: field 'prediction': rationale has no answer")
    report = LoadReport()
    assert len(load_teacher_outputs(path, skip_invalid=True, report=report)) == 1 and report.skipped == 1
    wrong_shape = tmp_path / "shape.json"
    wrong_shape.write_text(json.dumps({"data": 1}))
    with pytest.raises(RecordError, match="outputs"):
        load_teacher_outputs(wrong_shape)
    with pytest.raises(RecordError, match="file not found"):
        load_teacher_outputs(tmp_path / "missing.json")
