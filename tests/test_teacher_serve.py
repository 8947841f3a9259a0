"""Integration: ``trl-safedistill teach`` against a real ``transformers serve`` on the embedded default.

The server is started on 127.0.0.1 with a free port and one CPU thread (much faster than two on a busy
shared CPU), waited for with a bounded deadline, and always
stopped (its whole process group). Requests are kept tiny (a few tokens) for 2 shared CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trl_safedistill.data.local_server import local_teacher
from trl_safedistill.data.questions import load_questions
from trl_safedistill.data.teacher.prompts import load_fewshot
from trl_safedistill.data.teacher.run import TeacherConfig, run_teacher

pytestmark = pytest.mark.slow
STARTUP_SECONDS = 180

QUESTIONS = [
    {"id": "e1", "question": "What is 2 plus 3?", "answer": "5", "task": "easy"},
    {"id": "e2", "question": "What is 4 plus 4?", "answer": "8", "task": "easy"},
]
SHOTS = [
    {"id": "s1", "question": "What is 1 plus 1?", "rationale": "1 + 1 = 2.", "answer": "2", "task": "easy"},
    {"id": "s2", "question": "What is 3 plus 2?", "rationale": "3 + 2 = 5.", "answer": "5", "task": "easy"},
]


@pytest.fixture(scope="module")
def served(embedded_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with local_teacher(embedded_path, startup_timeout=STARTUP_SECONDS, log_path=log, threads=1) as base_url:
        yield base_url


@pytest.fixture
def question_files(tmp_path):
    questions, shots = tmp_path / "questions.jsonl", tmp_path / "shots.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in QUESTIONS))
    shots.write_text("".join(json.dumps(r) + "\n" for r in SHOTS))
    return questions, shots


@pytest.mark.parametrize(("endpoint", "count"), [("chat", 2), ("completions", 1)])
def test_teach_against_transformers_serve(served, question_files, tmp_path, endpoint, count):
    questions_path, shots_path = question_files
    questions = load_questions(str(questions_path), limit=count)
    config = TeacherConfig(base_url=served, endpoint=endpoint, max_tokens=16, shots=2, concurrency=2, timeout=150,
                           retries=1, progress=False)
    assert config.model is None  # run_teacher asks the server for its one model, as `teach` without --model does
    out = tmp_path / f"{endpoint}.jsonl"
    result = run_teacher(questions, out, config, load_fewshot(str(shots_path)))
    totals = result.totals
    assert result.requests == count and totals["failed"] == 0
    assert sum(totals.values()) == count
    ledger = [json.loads(line) for line in out.with_name(out.name + ".ledger.jsonl").read_text().splitlines()]
    assert sorted((r["question_id"], r["sample"]) for r in ledger) == [(q["id"], 0) for q in QUESTIONS[:count]]
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(kept) == totals["kept"]
    for row in kept:  # what the filter kept really concludes the gold answer
        gold = next(q["answer"] for q in QUESTIONS if q["id"] == row["id"])
        assert row["answer"] == gold
    again = run_teacher(questions, out, config, load_fewshot(str(shots_path)))
    assert again.requests == 0 and again.totals == totals  # a finished run resumes to nothing


def test_kill_and_resume_against_transformers_serve(served, tmp_path):
    """A real teach process killed after its first finished request, then resumed: same records and
    statuses as an uninterrupted run (greedy decoding, one request in flight, so replies are repeatable)."""
    rows = [{"id": f"k{i}", "question": f"What is {i} plus {i + 1}?", "answer": str(2 * i + 1), "task": "easy"} for i in range(1, 4)]
    questions, shots = tmp_path / "q.jsonl", tmp_path / "shots.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shots.write_text("".join(json.dumps(r) + "\n" for r in SHOTS))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "trl_safedistill.cli", "teach", "--questions", str(questions), "--out", str(out),
                "--base-url", served, "--fewshot", str(shots), "--shots", "2", "--endpoint", "completions",
                "--max-tokens", "16", "--concurrency", "1", "--temperature", "0", "--timeout", "150", "--no-progress"]

    whole = tmp_path / "whole.jsonl"
    subprocess.run(command(whole), env=env, check=True, timeout=300, capture_output=True)
    out = tmp_path / "killed.jsonl"
    ledger = out.with_name(out.name + ".ledger.jsonl")
    process = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and (not ledger.exists() or not ledger.read_text().strip()):
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait(timeout=30)
    done_at_kill = len(ledger.read_text().splitlines())
    assert 1 <= done_at_kill < len(rows), "the kill must land mid-run"
    subprocess.run(command(out), env=env, check=True, timeout=300, capture_output=True)

    def state(path: Path) -> tuple[list[str], dict]:
        records = sorted(json.dumps(json.loads(line), sort_keys=True) for line in path.read_text().splitlines())
        entries = [json.loads(line) for line in path.with_name(path.name + ".ledger.jsonl").read_text().splitlines()]
        statuses = {(e["question_id"], e["sample"]): e["status"] for e in entries}
        assert len(statuses) == len(entries) == len(rows)  # every question once, none twice
        return records, statuses

    assert state(out) == state(whole)
    assert whole.read_text().strip(), "greedy SmolLM2 answers these sums; no kept record means the filter broke"
