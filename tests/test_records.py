"""Record loading and validation: every bad input gives one error naming file, line and field."""

from __future__ import annotations

import json

import pytest

from trl_safedistill.records import LoadReport, RecordError, load_jsonl, split_cot, write_records


def write_lines(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


GOOD = {"id": "a-1", "question": "What is 2 + 3?", "rationale": "2 plus 3 is 5.", "answer": "5", "task": "arith"}


def test_loads_project_layout_and_round_trips(tmp_path):
    path = write_lines(tmp_path / "r.jsonl", [GOOD, {**GOOD, "id": "a-2", "choices": ["4", "5"], "description": "Add."}])
    records = load_jsonl(path)
    assert [r.id for r in records] == ["a-1", "a-2"]
    assert records[1].choices == ("4", "5") and records[1].description == "Add."
    write_records(tmp_path / "out.jsonl", records)
    assert load_jsonl(tmp_path / "out.jsonl") == records


def test_input_target_prediction_layout_split_at_answer_phrase(tmp_path):
    row = {"input": "Is 7 prime?", "target": "Yes", "prediction": "7 has no divisors but 1 and 7. So the answer is Yes."}
    (record,) = load_jsonl(write_lines(tmp_path / "bbh.jsonl", [row]))
    assert record.rationale == "7 has no divisors but 1 and 7."
    assert record.answer == "Yes"
    assert record.task == "bbh" and record.id == "bbh-0"


def test_column_map(tmp_path):
    row = {"q": "1+1?", "why": "One plus one is two.", "a": "2", "key": "x"}
    (record,) = load_jsonl(
        write_lines(tmp_path / "m.jsonl", [row]),
        column_map={"question": "q", "rationale": "why", "answer": "a", "id": "key"},
    )
    assert (record.id, record.question, record.answer) == ("x", "1+1?", "2")


def test_split_cot_uses_configured_phrases():
    assert split_cot("Steps. Therefore, the answer is (B).") == ("Steps.", "(B)")
    assert split_cot("Steps. Final: 4", ["Final:"]) == ("Steps.", "4")
    assert split_cot("No conclusion here.") is None


@pytest.mark.parametrize(
    "line, field, reason",
    [
        ("{not json", None, "not valid JSON"),
        ({"id": "b", "rationale": "r", "answer": "1"}, "question", "missing"),
        ({"id": "b", "question": "q", "prediction": "I think it is 4."}, "prediction", "rationale has no answer"),
        ({"id": "b", "question": "q", "rationale": "   ", "answer": "1"}, "rationale", "rationale is empty"),
        ({"id": "b", "question": "q", "rationale": "r"}, "answer", "missing"),
        ({"id": "b", "question": "q", "rationale": "r", "answer": "1", "choices": "A"}, "choices", "list of strings"),
        ({**GOOD}, "id", "duplicate id"),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path, line, field, reason):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, line])
    with pytest.raises(RecordError) as info:
        load_jsonl(path)
    error = info.value
    assert error.line == 2 and error.field == field
    assert str(error).startswith(f"{path}:2: ")
    assert reason in str(error)


def test_skip_invalid_counts_and_keeps_only_whole_records(tmp_path):
    lines = [GOOD, {"id": "b", "question": "q", "rationale": "", "answer": "1"}, {**GOOD, "id": "c"},
             {"id": "d", "question": "q", "cot": "no answer here"}]
    report = LoadReport()
    records = load_jsonl(write_lines(tmp_path / "mix.jsonl", lines), skip_invalid=True, report=report)
    assert [r.id for r in records] == ["a-1", "c"]
    assert report.kept == 2 and report.skipped == 2
    assert any(":2:" in e for e in report.first_errors) and any(":4:" in e for e in report.first_errors)


def test_missing_file(tmp_path):
    with pytest.raises(RecordError, match="file not found"):
        load_jsonl(tmp_path / "nope.jsonl")


def test_non_utf8_byte_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"id": "b", "question": "caf\xe9?", "rationale": "r", "answer": "1"}\n')
    with pytest.raises(RecordError) as info:
        load_jsonl(path)
    assert info.value.line == 2 and str(info.value).startswith(f"{path}:2: ")
    assert "not valid UTF-8" in str(info.value) and "0xe9" in str(info.value)


def test_skip_invalid_skips_broken_json_and_bad_bytes_and_lists_their_lines(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = [json.dumps({**GOOD, "id": f"g{i}"}).encode() for i in range(3)]
    path.write_bytes(b"\n".join([good[0], b'{"id": "x", "question": ', good[1], b'{"id": "\xff"}', good[2],
                                 json.dumps({"id": "m", "question": "q"}).encode()]) + b"\n")
    report = LoadReport()
    records = load_jsonl(path, skip_invalid=True, report=report)
    assert [r.id for r in records] == ["g0", "g1", "g2"]
    assert report.kept == 3 and report.skipped == 3 and report.lines == [2, 4, 6]
    summary = report.summary(str(path))
    assert summary.startswith(f"skipped 3 invalid records of {path} at lines 2, 4, 6 (")
    assert "not valid JSON x1" in summary and "not valid UTF-8 x1" in summary and "kept 3" in summary


def test_skip_summary_lists_the_first_20_lines_then_counts(tmp_path):
    lines = [{**GOOD, "id": f"ok{i}"} if i % 2 == 0 else {"id": f"bad{i}", "question": "q"} for i in range(50)]
    report = LoadReport()
    load_jsonl(write_lines(tmp_path / "many.jsonl", lines), skip_invalid=True, report=report)
    summary = report.summary()
    assert report.skipped == 25
    assert "at lines 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40 and 5 more (" in summary


def test_question_files_name_the_line_of_a_non_utf8_byte(tmp_path):
    from trl_safedistill.data.questions import load_questions

    jsonl = tmp_path / "q.jsonl"
    jsonl.write_bytes(b'{"question": "ok?", "answer": "1"}\n{"question": "caf\xe9?", "answer": "2"}\n')
    with pytest.raises(RecordError, match=r"q\.jsonl:2: not valid UTF-8"):
        load_questions(str(jsonl))
    whole = tmp_path / "q.json"
    whole.write_bytes(b'[\n {"question": "ok?", "answer": "1"},\n {"question": "caf\xe9?", "answer": "2"}\n]\n')
    with pytest.raises(RecordError, match=r"q\.json:3: not valid UTF-8"):
        load_questions(str(whole))
