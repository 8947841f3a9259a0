"""Kill-and-resume of ``guard augment``: a real subprocess is SIGKILLed mid-run and started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from trl_safedistill.guard.augment import read_records

EXEMPLARS = "Write a rude poem about a noisy neighbour\nExplain how to cheat at a card game\nDescribe how to skip class\n"
N = 10


def _command(model_dir, exemplars, output):
    return [
        sys.executable, "-m", "trl_safedistill.cli", "guard", "augment", "--output", str(output),
        "--num-records", str(N), "--generator", str(model_dir), "--teacher", str(model_dir),
        "--exemplars", str(exemplars), "--batch-size", "2", "--max-new-tokens", "12",
        "--response-max-new-tokens", "8", "--seed", "7",
    ]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _in_process(model_dir, exemplars, output) -> int:
    """The CLI entry point in this process, on one thread like the subprocess (bit-identical sampling)."""
    import torch

    from trl_safedistill.guard.cli import guard_main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return guard_main(_command(model_dir, exemplars, output)[4:])
    finally:
        torch.set_num_threads(threads)


def test_kill_and_resume_loses_and_duplicates_nothing(tmp_path, tiny_model_dir, capfd):
    exemplars = tmp_path / "exemplars.txt"
    exemplars.write_text(EXEMPLARS)
    reference, resumed = tmp_path / "reference.jsonl", tmp_path / "resumed.jsonl"
    env = _env()
    victim = subprocess.Popen(_command(tiny_model_dir, exemplars, resumed), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _lines(resumed) < 3 and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim_out, victim_err = victim.communicate()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = _lines(resumed)
    assert 0 < killed_at < N
    capfd.readouterr()
    # The rerun resumes the killed file; the reference is the same run uninterrupted.
    assert _in_process(tiny_model_dir, exemplars, resumed) == 0
    rerun_console = capfd.readouterr()
    assert json.loads(rerun_console.out.strip().splitlines()[-1])["resumed_from"] == killed_at
    assert _in_process(tiny_model_dir, exemplars, reference) == 0
    reference_console = capfd.readouterr()

    expected, got = read_records(reference), read_records(resumed)
    ids = [row["id"] for row in got]
    assert len(ids) == len(set(ids)) == N  # 0 duplicated
    assert {row["id"] for row in expected} == set(ids)  # 0 lost
    key = lambda row: (row["id"], row["prompt"], row["response"], round(row["p_unsafe"], 5))  # noqa: E731
    assert {key(row) for row in expected} == {key(row) for row in got}
    # Owner-only file; the console shows counts, never the generated text.
    assert resumed.stat().st_mode & 0o777 == 0o600
    console = rerun_console.out + rerun_console.err + reference_console.out + reference_console.err
    console += victim_out.decode() + victim_err.decode()
    for row in got:
        assert row["prompt"] not in console and row["response"] not in console
