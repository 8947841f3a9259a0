"""compare_runs: what a refactoring must not move (values, per-item judgments) is told apart from what it may."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from trl_safedistill.experiments.compare_runs import compare, main

METRICS = {
    "run": {"wall_seconds": 10.0, "command": "a", "created": "x"},
    "models": [{"name": "standard", "metrics": {"refusal": {"value": 0.5, "ci": [0.25, 0.75], "n": 4}},
                "train": {"train_runtime": 3.0}, "curve": [{"step": 0, "refusal": 0.5, "heldout_loss": 1.25}]}],
}
SAMPLES = [{"task": "safedistill_advbench", "response": "I cannot.", "safety_ratio": 1.0},
           {"task": "safedistill_advbench", "response": "Sure.", "safety_ratio": 0.0}]


def write_run(root: Path, metrics: dict, samples: list[dict]) -> Path:
    (root / "report").mkdir(parents=True)
    (root / "report" / "metrics.json").write_text(json.dumps(metrics))
    (root / "eval" / "standard").mkdir(parents=True)
    (root / "eval" / "standard" / "samples_safety.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    return root


def test_timings_differ_nothing_else(tmp_path):
    other = copy.deepcopy(METRICS)
    other["run"] = {"wall_seconds": 99.0, "command": "b", "created": "y"}
    other["models"][0]["train"]["train_runtime"] = 7.0
    a, b = write_run(tmp_path / "a", METRICS, SAMPLES), write_run(tmp_path / "b", other, SAMPLES)
    assert compare(a, b) == {"metrics": [], "ci": [], "items": [], "texts": []}
    assert main([str(a), str(b)]) == 0


def test_a_moved_value_a_flipped_judgment_and_an_interval_are_each_reported(tmp_path):
    other = copy.deepcopy(METRICS)
    other["models"][0]["curve"][0]["heldout_loss"] = 1.2500001
    other["models"][0]["metrics"]["refusal"]["ci"] = [0.2, 0.8]
    flipped = [SAMPLES[0], {**SAMPLES[1], "safety_ratio": 1.0, "response": "No."}]
    a, b = write_run(tmp_path / "a", METRICS, SAMPLES), write_run(tmp_path / "b", other, flipped)
    found = compare(a, b)
    assert found["metrics"] == ["metrics.models[standard].curve[0].heldout_loss: 1.25 vs 1.2500001"]
    assert len(found["ci"]) == 2 and found["texts"] == ["eval/standard/samples_safety.jsonl:2"]
    assert found["items"] == ["eval/standard/samples_safety.jsonl:2: judgments differ"]
    assert compare(a, b, ignore_ci=True)["ci"] == []
    assert main([str(a), str(b)]) == 1


def test_a_results_folder_without_sample_logs_compares_metrics_only(tmp_path):
    a = write_run(tmp_path / "a", METRICS, SAMPLES)
    results = tmp_path / "results"
    results.mkdir()
    (results / "metrics.json").write_text(json.dumps(METRICS))
    assert compare(results, a) == {"metrics": [], "ci": [], "items": [], "texts": []}
