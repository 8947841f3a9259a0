"""Teacher generation against a real local (fake, deterministic) OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:  # tests/ is a package in this repository; the fallback keeps the module runnable without it
    from .test_teacher_fakes import FakeTeacher, expected_status, write_questions
except ImportError:  # pragma: no cover
    from test_teacher_fakes import FakeTeacher, expected_status, write_questions

from trl_safedistill.answers import answers_match, split_completion
from trl_safedistill.data.ledger import Ledger
from trl_safedistill.data.local_server import free_port
from trl_safedistill.data.openai_client import ClientConfig, RequestFailed, TeacherClient
from trl_safedistill.data.questions import Question, load_questions
from trl_safedistill.data.teacher.cli import main
from trl_safedistill.data.teacher.prompts import build_messages, build_prompt
from trl_safedistill.data.teacher.run import TeacherConfig, TeacherStopped, judge, run_teacher
from trl_safedistill.records import RecordError, load_jsonl

REPO = Path(__file__).resolve().parents[1]


def config(base_url: str, **overrides) -> TeacherConfig:
    values = dict(base_url=base_url, model="fake-teacher", concurrency=4, timeout=5, retries=3, progress=False)
    values.update(overrides)
    return TeacherConfig(**values)


def expected_kept(rows: list[dict], n: int, keep: str, seed: int = 0) -> set[tuple[str, int]]:
    kept = set()
    for row in rows:
        a = int(row["id"][1:])
        for sample in range(n):
            if expected_status(a, seed + sample) == "kept":
                kept.add((row["id"], sample))
                if keep == "first":
                    break
    return kept


def keys(path: Path) -> list[tuple[str, int]]:
    return [(row["question_id"], row["sample"]) for row in map(json.loads, path.read_text().splitlines())]


# ----------------------------------------------------------------------------- the filter


def test_filter_keeps_exactly_the_correct_rationales_on_a_hand_made_set():
    q = Question("x", "What is 2 plus 3?", "5")
    mc = Question("m", "Pick one", "(B)", choices=("red", "blue"))
    cases = {
        "num-ok": (q, "2 + 3 = 5.\nTherefore, the answer is 5.", True),
        "num-float": (q, "Adding gives five.\nTherefore, the answer is 5.0.", True),
        "num-unit": (q, "We count.\nTherefore, the answer is 5 apples.", True),
        "num-wrong": (q, "2 + 3 = 6.\nTherefore, the answer is 6.", False),
        "num-prefix": (q, "Hmm.\nTherefore, the answer is 55.", False),
        "no-phrase": (q, "2 + 3 = 5.", False),
        "empty-answer": (q, "2 + 3 = 5. Therefore, the answer is", False),
        "mc-letter": (mc, "Blue it is.\nTherefore, the answer is (B).", True),
        "mc-bare": (mc, "Blue it is.\nSo the answer is B.", True),
        "mc-text": (mc, "Blue it is.\nTherefore, the answer is blue.", True),
        "mc-wrong": (mc, "Red.\nTherefore, the answer is (A).", False),
        "mc-wrong-text": (mc, "Red.\nTherefore, the answer is red.", False),
    }
    cfg = TeacherConfig(progress=False)
    kept = {name for name, (question, text, _) in cases.items() if judge(question, 0, text, cfg).status == "kept"}
    assert kept == {name for name, (_, _, ok) in cases.items() if ok}
    assert judge(q, 0, "2 + 3 = 5.", cfg).status == "unparseable"
    assert judge(q, 0, "x\nTherefore, the answer is 6.", cfg).status == "wrong"
    record = judge(q, 0, "2 + 3 = 5.\nTherefore, the answer is 5.", cfg).record
    assert record.rationale == "2 + 3 = 5." and record.answer == "5"
    assert split_completion("r\nThe final: Z", "The final:") == ("r", "Z")
    assert not answers_match("red", "dark red")


def test_run_keeps_exactly_the_correct_samples_with_summary(tmp_path):
    rows = write_questions(tmp_path / "q.jsonl", 20)
    questions = load_questions(str(tmp_path / "q.jsonl"))
    with FakeTeacher() as teacher:
        result = run_teacher(questions, tmp_path / "all.jsonl", config(teacher.base_url, n=3, keep="all"))
        assert teacher.answered == 60
    assert set(keys(tmp_path / "all.jsonl")) == expected_kept(rows, 3, "all")
    statuses = [expected_status(int(r["id"][1:]), s) for r in rows for s in range(3)]
    totals = result.totals
    assert (totals["kept"], totals["wrong"], totals["unparseable"], totals["failed"]) == (
        statuses.count("kept"),
        statuses.count("wrong"),
        statuses.count("unparseable"),
        0,
    )
    assert set(result.summary) == {"t0", "t1"}
    records = load_jsonl(tmp_path / "all.jsonl")  # the output is in the project's record layout
    assert {r.id for r in records} == {f"{q}#{s}" for q, s in expected_kept(rows, 3, "all")}
    for record in records:
        a, b = map(int, record.question.removeprefix("What is ").rstrip("?").split(" plus "))
        assert record.answer == str(a + b)


def test_keep_first_stops_at_the_first_correct_sample(tmp_path):
    rows = write_questions(tmp_path / "q.jsonl", 15)
    with FakeTeacher() as teacher:
        run_teacher(load_questions(str(tmp_path / "q.jsonl")), tmp_path / "first.jsonl", config(teacher.base_url, n=4, keep="first"))
        expected_requests = 0
        for row in rows:
            for sample in range(4):
                expected_requests += 1
                if expected_status(int(row["id"][1:]), sample) == "kept":
                    break
        assert teacher.answered == expected_requests
    assert set(keys(tmp_path / "first.jsonl")) == expected_kept(rows, 4, "first")
    assert len({q for q, _ in keys(tmp_path / "first.jsonl")}) == len(keys(tmp_path / "first.jsonl"))


@pytest.mark.parametrize("failures", [(429,), (500, 503), ("timeout",)])
def test_server_failing_the_first_requests_still_yields_every_record(tmp_path, failures):
    rows = write_questions(tmp_path / "q.jsonl", 8)
    fail_first = 3
    with FakeTeacher(fail_first=fail_first, failures=failures, timeout_sleep=0.6, retry_after="0.01") as teacher:
        cfg = config(teacher.base_url, concurrency=1, timeout=0.3, retries=fail_first, endpoint="completions")
        result = run_teacher(load_questions(str(tmp_path / "q.jsonl")), tmp_path / "out.jsonl", cfg)
        assert teacher.requests == len(rows) + fail_first
    assert result.totals["failed"] == 0
    assert set(keys(tmp_path / "out.jsonl")) == expected_kept(rows, 1, "first")


def test_failures_beyond_the_retry_budget_are_counted_and_retried_on_resume(tmp_path):
    rows = write_questions(tmp_path / "q.jsonl", 4)
    with FakeTeacher(fail_first=3, failures=(500,)) as teacher:
        cfg = config(teacher.base_url, concurrency=1, retries=0)
        first = run_teacher(load_questions(str(tmp_path / "q.jsonl")), tmp_path / "out.jsonl", cfg)
        assert first.totals["failed"] == 3
        second = run_teacher(load_questions(str(tmp_path / "q.jsonl")), tmp_path / "out.jsonl", cfg)
    assert second.requests == 3 and second.totals["failed"] == 0
    assert sorted(keys(tmp_path / "out.jsonl")) == sorted(expected_kept(rows, 1, "first"))


def _chat(client: TeacherClient) -> str:
    return client.chat([{"role": "user", "content": "Q: What is 1 plus 2?"}], seed=0)


def test_client_waits_the_servers_retry_after_on_429_then_succeeds():
    with FakeTeacher(fail_first=1, failures=(429,), retry_after="1.5") as teacher:
        assert _chat(TeacherClient(ClientConfig(teacher.base_url, "fake-teacher", retries=2))).endswith("the answer is 3.")
        assert teacher.requests == 2
        # the SDK's own first backoff is at most 0.5 s: a gap of 1.5 s is the server's Retry-After
        assert teacher.arrivals[1] - teacher.arrivals[0] >= 1.4


def test_client_backs_off_after_a_500_then_succeeds():
    with FakeTeacher(fail_first=1, failures=(500,)) as teacher:
        assert _chat(TeacherClient(ClientConfig(teacher.base_url, "fake-teacher", retries=2))).endswith("the answer is 3.")
        assert teacher.requests == 2
        assert teacher.arrivals[1] - teacher.arrivals[0] >= 0.3  # backoff 0.5 s less up to 25% jitter


def test_client_gives_up_after_its_retries():
    with FakeTeacher(fail_first=10, failures=(503,), retry_after="0.01") as teacher:
        with pytest.raises(RequestFailed, match=r"chat/completions: HTTP 503 \(try again\) after 3 attempts") as failed:
            _chat(TeacherClient(ClientConfig(teacher.base_url, "fake-teacher", retries=2)))
        assert teacher.requests == 3 and failed.value.status == 503 and not failed.value.unreachable


def test_client_does_not_retry_a_client_error():
    with FakeTeacher() as teacher:
        client = TeacherClient(ClientConfig(teacher.base_url, "wrong-model", retries=3))
        began = time.monotonic()
        with pytest.raises(RequestFailed, match=r"HTTP 400 \(bad request\) \(not retried\)"):
            _chat(client)
        assert teacher.requests == 1 and time.monotonic() - began < 1
        assert TeacherClient(ClientConfig(teacher.base_url)).list_models() == ["fake-teacher"]


# ----------------------------------------------------------------------------- failing fast


def test_teach_against_a_closed_port_stops_at_once_keeping_the_output(tmp_path, capsys):
    """The issue's case: no server at the URL. Before, 4 questions took 28 s of retries (40 took 125 s)."""
    write_questions(tmp_path / "q.jsonl", 12)
    out = tmp_path / "o.jsonl"
    common = ["--questions", str(tmp_path / "q.jsonl"), "--out", str(out), "--fewshot", "none", "--no-progress"]
    with FakeTeacher() as teacher:
        assert main([*common, "--base-url", teacher.base_url, "--model", "fake-teacher", "--limit", "6"]) == 0
    written = {path: path.read_bytes() for path in (out, tmp_path / "o.jsonl.ledger.jsonl")}
    assert written[out]
    capsys.readouterr()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    for model in (["--model", "fake-teacher"], []):  # with a model, and asking the server for it
        began = time.monotonic()
        assert main([*common, "--base-url", dead, *model]) == 1
        assert time.monotonic() - began < 3
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert dead in err and "Connection refused" in err
        assert f"6 of 12 questions done, {len(written[out].splitlines())} records kept in {out}" in err
        assert {path: path.read_bytes() for path in written} == written  # nothing lost, nothing added


def test_a_server_that_breaks_mid_run_stops_the_run_and_it_resumes(tmp_path):
    rows = write_questions(tmp_path / "q.jsonl", 40)
    questions = load_questions(str(tmp_path / "q.jsonl"))
    out = tmp_path / "o.jsonl"
    cfg = config("", concurrency=1, retries=1, max_consecutive_failures=3)
    with FakeTeacher(fail_after=10, failures=(503,), retry_after="0.01") as teacher:
        cfg.base_url = teacher.base_url
        with pytest.raises(TeacherStopped, match=r"3 requests in a row failed at .*HTTP 503 \(try again\) after 2 attempts") as stop:
            run_teacher(questions, out, cfg)
        assert teacher.requests == 10 + 3 * 2  # the 10 answered, then 3 requests of 2 attempts, then no more
    assert "10 of 40 questions done" in str(stop.value)
    kept_before = out.read_text()
    assert len(kept_before.splitlines()) == len(expected_kept(rows[:10], 1, "first"))
    with FakeTeacher() as teacher:  # the server is back: the same call finishes the job
        cfg.base_url = teacher.base_url
        result = run_teacher(questions, out, cfg)
        assert teacher.answered == 30
    assert out.read_text().startswith(kept_before) and result.totals["failed"] == 0
    assert sorted(keys(out)) == sorted(expected_kept(rows, 1, "first"))


def test_failures_that_are_not_consecutive_do_not_stop_the_run(tmp_path):
    rows = write_questions(tmp_path / "q.jsonl", 6)
    with FakeTeacher(fail_first=2, failures=(400,)) as teacher:  # two permanent failures, then answers
        result = run_teacher(load_questions(str(tmp_path / "q.jsonl")), tmp_path / "o.jsonl",
                             config(teacher.base_url, concurrency=1, max_consecutive_failures=3))
    assert result.totals["failed"] == 2 and result.totals["kept"] == len(expected_kept(rows[2:], 1, "first"))


# ----------------------------------------------------------------------------- resumption


def test_ledger_repairs_a_torn_line_and_adopts_an_orphan_record(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "a", "question": "q", "rationale": "r", "answer": "1", "question_id": "a", "sample": 0}) + "\n{\"id\": \"b\", \"quest")
    (tmp_path / "out.jsonl.ledger.jsonl").write_text('{"question_id": "z", "sample": 0, "task": "t", "status": "wrong"}\n{"quest')
    with Ledger.open(out) as ledger:
        assert ledger.status == {("z", 0): "wrong", ("a", 0): "kept"}
    assert out.read_text().count("\n") == 1 and out.read_text().endswith("\n")
    assert len((tmp_path / "out.jsonl.ledger.jsonl").read_text().splitlines()) == 2


def _teach_command(questions: Path, out: Path, base_url: str) -> list[str]:
    return [sys.executable, "-m", "trl_safedistill.cli", "teach", "--questions", str(questions), "--out", str(out),
            "--base-url", base_url, "--model", "fake-teacher", "--n", "3", "--keep", "first", "--concurrency", "3",
            "--fewshot", "none", "--no-progress"]


def test_kill_and_resume_yields_exactly_the_uninterrupted_records(tmp_path):
    rows = write_questions(tmp_path / "q.jsonl", 60)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with FakeTeacher(delay=0.02) as teacher:
        whole = tmp_path / "whole.jsonl"
        subprocess.run(_teach_command(tmp_path / "q.jsonl", whole, teacher.base_url), env=env, check=True, timeout=120)
        uninterrupted_requests = teacher.answered

        out = tmp_path / "killed.jsonl"
        process = subprocess.Popen(_teach_command(tmp_path / "q.jsonl", out, teacher.base_url), env=env)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 10):
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait(timeout=30)
        written = len(out.read_text().splitlines())
        assert process.returncode == -signal.SIGKILL
        assert 10 <= written < len(expected_kept(rows, 3, "first")), "the kill must land mid-run"

        subprocess.run(_teach_command(tmp_path / "q.jsonl", out, teacher.base_url), env=env, check=True, timeout=120)
        # the resumed run redid at most the requests that were in flight at the kill (--concurrency 3)
        assert uninterrupted_requests <= teacher.answered - uninterrupted_requests <= uninterrupted_requests + 3

    def content(path: Path) -> list[str]:
        return sorted(json.dumps(row, sort_keys=True) for row in map(json.loads, path.read_text().splitlines()))

    assert content(out) == content(whole)  # nothing lost, nothing duplicated, same records
    assert len(keys(out)) == len(set(keys(out))) == len(expected_kept(rows, 3, "first"))
    ledger = [json.loads(line) for line in (tmp_path / "killed.jsonl.ledger.jsonl").read_text().splitlines()]
    assert len({(r["question_id"], r["sample"]) for r in ledger}) == len(ledger)


# ----------------------------------------------------------------------------- prompts and CLI


def test_prompts_are_few_shot_and_end_with_the_answer_phrase():
    from trl_safedistill.data.synthetic import generate

    shots = generate("multistep_arithmetic", 2, seed=5)
    question = Question("q", "((1 + 2) * (3 - 4)) =", "-3", task="multistep_arithmetic", description="Solve it.")
    messages = build_messages(question, shots, "So it is")
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Solve it.\n") and '"So it is <answer>."' in messages[0]["content"]
    assert messages[1]["content"].endswith(f"So it is {shots[0].answer}.")
    prompt = build_prompt(question, shots, "So it is")
    assert prompt.count("Q: ") == 3 and prompt.endswith("Q: ((1 + 2) * (3 - 4)) =\nA: Let's think step by step.\n")


def test_cli_reports_a_bad_question_file_by_line_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "What?", "answer": "1"}\n{"id": "b", "question": "Why?"}\n')
    assert main(["--questions", str(bad), "--out", str(tmp_path / "o.jsonl"), "--no-progress"]) == 2
    assert f"{bad}:2: field 'gold'" in capsys.readouterr().err
    with pytest.raises(RecordError, match="duplicate id"):
        bad.write_text('{"id": "a", "question": "What?", "answer": "1"}\n{"id": "a", "question": "Why?", "answer": "2"}\n')
        load_questions(str(bad))


def test_cli_uses_environment_and_the_served_model(tmp_path, monkeypatch, capsys):
    write_questions(tmp_path / "q.jsonl", 6)
    with FakeTeacher() as teacher:
        monkeypatch.setenv("OPENAI_BASE_URL", teacher.base_url.removesuffix("/v1"))
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
        monkeypatch.delenv("OPENAI_MODEL", raising=False)
        code = main(["--questions", str(tmp_path / "q.jsonl"), "--out", str(tmp_path / "o.jsonl"), "--no-progress"])
        assert {h.get("authorization") for h in teacher.headers} == {"Bearer sk-local"}
    err = capsys.readouterr().err
    assert code == 0
    assert "kept" in err and "unparseable" in err and "t0" in err
    assert "Therefore" not in err  # generated text never reaches the console


def test_progress_bar_shows_rate_and_eta(tmp_path, capsys):
    write_questions(tmp_path / "q.jsonl", 5)
    with FakeTeacher() as teacher:
        run_teacher(load_questions(str(tmp_path / "q.jsonl")), tmp_path / "o.jsonl", config(teacher.base_url, progress=True))
    err = capsys.readouterr().err
    assert "teach" in err and "5/5" in err
    assert re.search(r"question/s|s/question", err) and "<" in err  # rate and elapsed<remaining (ETA)
