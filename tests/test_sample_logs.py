"""Sample logs (generated responses to possibly harmful prompts) are owner-only (0600), whatever the umask.

Every kind of sample log is written by one of three writers, each run here for real on a tiny random model:

* :func:`trl_safedistill.experiments.probes.refusal_rate` appends to the demo's curve and step-0 logs
  (``samples.jsonl`` of ``curve0`` and of each ``distil:<method>`` / ``sweep:<id>`` stage);
* :func:`trl_safedistill.evaluation.run.evaluate` writes the gate's (``samples_gate.jsonl``,
  ``gate_samples.jsonl``), the sweep's score (``sweep-refusal/<id>/samples.jsonl``, the gate's measurement), the
  demo's eval stage (``samples_safety.jsonl``, ``samples_ind_gen.jsonl``) and ``trl-safedistill eval``'s
  ``samples-<row>.jsonl``;
* lm-eval's own ``--log_samples`` files, through ``python -m trl_safedistill.evaluation.lm_eval_main``.
"""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest

from trl_safedistill.atomic import PRIVATE


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    """The common default umask 022, under which a plain ``open`` creates 0644 files (world-readable)."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread


def test_probe_log_is_private_new_or_appended(tiny_model, tiny_tokenizer, tmp_path, open_umask):
    from trl_safedistill.experiments.probes import refusal_rate

    log = tmp_path / "stage" / "samples_curve.jsonl"
    refusal_rate(tiny_model, tiny_tokenizer, ["How do I pick a lock?"], 2, 1, log)
    assert mode_of(log) == PRIVATE
    assert len(log.read_text().splitlines()) == 1

    older = tmp_path / "samples.jsonl"  # a log left world-readable by an earlier version: tightened, then appended
    older.write_text('{"prompt": "p", "response": "r", "refusal": false}\n')
    os.chmod(older, 0o644)
    refusal_rate(tiny_model, tiny_tokenizer, ["How do I pick a lock?", "Write a poem."], 2, 2, older)
    assert mode_of(older) == PRIVATE
    rows = [json.loads(line) for line in older.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["response"] == "r" and {"prompt", "response", "refusal"} <= set(rows[2])


def test_evaluation_sample_log_is_private(tiny_model, tiny_tokenizer, tmp_path, open_umask):
    from trl_safedistill.evaluation.run import evaluate_model

    log = tmp_path / "samples_safety.jsonl"
    log.write_text("stale\n")
    os.chmod(log, 0o644)
    evaluate_model(tiny_model, tiny_tokenizer, "standard", ["safety"], limit=1, max_gen_toks=2, sample_log=log,
                   bootstrap_iters=0, online=False)
    assert mode_of(log) == PRIVATE
    rows = [json.loads(line) for line in log.read_text().splitlines()]  # rewritten, not appended to
    assert rows and all("response" in row for row in rows)


@pytest.mark.slow
def test_lm_eval_cli_log_samples_are_private(tiny_model_dir, tmp_path, monkeypatch, open_umask):
    from trl_safedistill.evaluation import lm_eval_main

    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "lm_eval", "run", "--model", "safedistill-hf",
        "--model_args", f"pretrained={tiny_model_dir},format=standard",
        "--include_path", "eval_tasks", "--tasks", "safedistill_advbench", "--limit", "1",
        "--gen_kwargs", "max_gen_toks=2", "--output_path", str(out), "--log_samples",
    ])
    lm_eval_main.main()
    samples = list(out.rglob("samples_*.jsonl"))
    assert samples, sorted(str(p) for p in out.rglob("*"))
    for path in samples:
        assert mode_of(path) == PRIVATE, path
        assert mode_of(path.parent) == 0o700, path.parent  # folders stay traversable by their owner
    assert os.umask(0o022) == 0o022  # the entry point restores the caller's umask
