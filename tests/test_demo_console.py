"""The demo's console: progress lines and the report's path, nothing else (no Trainer log dicts, progress bars,
library warnings), also from the spawned evaluation workers.

The tiny demo runs in a subprocess, so that everything written to the file descriptors counts, the workers' output
included, and with the quiet switches removed from its environment, so that the demo must set them itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from trl_safedistill.experiments.console import QUIET_ENVIRONMENT
from trl_safedistill.experiments.stage_progress import PROGRESS_LINE


@pytest.fixture(scope="module")
def console_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("console") / "run"
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENVIRONMENT and k != "PYTHONWARNINGS"}
    command = [sys.executable, "-m", "trl_safedistill.cli", "demo", "--size", "tiny", "--output-dir", str(run_dir),
               "--methods", "standard,slowed", "--set", "eval_workers=2"]  # two spawned evaluation workers
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_stdout_holds_the_report_path_only(console_run):
    run_dir, result = console_run
    lines = result.stdout.splitlines()
    assert lines == [f"report: {run_dir / 'report' / 'report.md'}"], "\n".join(lines[:20])


def test_stderr_holds_progress_lines_only(console_run):
    _, result = console_run
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    strays = [line for line in lines if not PROGRESS_LINE.fullmatch(line)]
    assert not strays, "\n".join(strays[:20])
    assert any("] step 4/4 100%" in line for line in lines)  # the training steps are shown
    assert sum("eval:" in line and "start - 2 workers" in line for line in lines) == 3


def test_the_silenced_training_logs_are_kept_in_the_run(console_run):
    run_dir, _ = console_run
    state = json.loads((run_dir / "state.json").read_text())
    losses = state["stages"]["distil:standard"]["result"]["train_loss"]
    assert len(losses) == 4 and all(value > 0 for value in losses.values())  # Trainer's log_history, not printed
