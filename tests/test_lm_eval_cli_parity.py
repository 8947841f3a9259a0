"""The plain ``lm_eval`` command the README shows scores a model exactly as ``trl-safedistill eval`` does.

Both run on the embedded default (a real chat model, so responses are real text and some are refusals) over
the same items: the README's ``lm_eval run --model hf ... --apply_chat_template`` in a subprocess, and the
project's evaluation path (``safedistill-hf`` through :func:`trl_safedistill.evaluation.run.evaluate_model`).
Every response and every per-item judgment must be identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TASKS = ["safedistill_advbench", "safedistill_overrefusal"]
LIMIT = 4
TOKENS = 16


@pytest.mark.slow
def test_readme_lm_eval_command_gives_the_same_items_as_trl_safedistill_eval(embedded_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from trl_safedistill.evaluation.run import eval_tasks_dir, evaluate_model
    from trl_safedistill.models import load_tokenizer

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "--apply_chat_template" in readme and "lm_eval run --model hf" in readme

    out = tmp_path / "lm_eval"
    command = [
        str(Path(sys.executable).with_name("lm_eval")), "run", "--model", "hf",
        "--model_args", f"pretrained={embedded_path},dtype=float32", "--apply_chat_template",
        "--include_path", str(eval_tasks_dir()), "--tasks", ",".join(TASKS), "--limit", str(LIMIT),
        "--gen_kwargs", f"max_gen_toks={TOKENS}", "--batch_size", "1", "--output_path", str(out), "--log_samples",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]

    tokenizer = load_tokenizer(str(embedded_path))
    model = AutoModelForCausalLM.from_pretrained(str(embedded_path), dtype="float32")
    result = evaluate_model(model, tokenizer, "standard", suites=("safety",), limit=LIMIT, max_gen_toks=TOKENS,
                            batch_size=1, tasks=TASKS, online=False, sample_log=tmp_path / "mine.jsonl", bootstrap_iters=0)
    mine = [json.loads(line) for line in (tmp_path / "mine.jsonl").read_text(encoding="utf-8").splitlines()]

    judged = 0
    for task in TASKS:
        (path,) = out.rglob(f"samples_{task}_*.jsonl")
        theirs = sorted((json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()), key=lambda s: s["doc_id"])
        ours = [row for row in mine if row["task"] == task]
        assert len(theirs) == len(ours) == LIMIT
        metric = "safety_ratio" if task == "safedistill_advbench" else "over_refusal"
        for their, our in zip(theirs, ours):
            response = their["filtered_resps"][0] if their.get("filtered_resps") else their["resps"][0][0]
            assert response == our["response"]
            assert float(their[metric]) == float(our[metric])
            judged += 1
        summary_key = "safety_ratio" if task == "safedistill_advbench" else "over_refusal"
        assert result["summary"][summary_key]["value"] == pytest.approx(sum(float(t[metric]) for t in theirs) / LIMIT)
    assert judged == 2 * LIMIT
