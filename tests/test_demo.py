"""The demo pipeline in miniature (tiny random model, a handful of steps): artefacts, caching, resume, gate."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from trl_safedistill.experiments import demo
from trl_safedistill.experiments.demo_pipeline import DemoPipeline
from trl_safedistill.experiments.schema import SchemaError, validate, validate_file
from trl_safedistill.experiments.sizes import get_size

METHODS = ["standard", "slowed", "cascade", "standard_lr1e-3"]


def run_demo(run_dir: Path, *extra: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = demo.main(["--size", "tiny", "--output-dir", str(run_dir), "--methods", ",".join(METHODS), *extra])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    code, console = run_demo(run_dir, "--results-dir", str(run_dir.parent / "results"))
    assert code == 0, console
    return run_dir, console


def test_miniature_produces_every_artefact(tiny_run):
    run_dir, console = tiny_run
    report = run_dir / "report"
    for name in ("metrics.json", "report.md", "final_metrics.png", "refusal_vs_step.png", "refusal_vs_learned.png"):
        assert (report / name).stat().st_size > 0, name
        assert (run_dir.parent / "results" / name).exists()
    metrics = validate_file(report / "metrics.json")
    assert [m["name"] for m in metrics["models"]] == ["aligned", *METHODS]
    for model in metrics["models"][1:]:
        assert [p["step"] for p in model["curve"]] == [0, 2, 4]  # step 0 = the aligned start, then every 2 steps
        for key in ("refusal", "harmbench_refusal", "over_refusal", "ind_mc_acc", "ind_acc", "ood_mc_acc"):
            assert model["metrics"][key]["n"] > 0, (model["name"], key)
    assert {f["id"] for f in metrics["findings"]} >= {"standard_erodes", "slowed_keeps_refusal", "cascade_ood"}
    assert metrics["gate"]["enforced"] is False
    text = (report / "report.md").read_text()
    assert "| CasCoD |" in text and "![refusal_vs_learned.png]" in text
    assert "[1/" in console and "ETA" in console  # progress display names the stage and an ETA


def test_no_generated_text_reaches_the_console(tiny_run):
    run_dir, console = tiny_run
    logs = list(run_dir.rglob("samples*.jsonl"))
    assert logs
    responses = [json.loads(line)["response"] for path in logs for line in path.read_text().splitlines() if line.strip()]
    responses = [r.strip() for r in responses if len(r.strip()) >= 8]
    assert responses  # the random model does say something
    assert not [r for r in responses if r in console]


def test_a_finished_run_is_not_rerun(tiny_run):
    run_dir, _ = tiny_run
    before = json.loads((run_dir / "state.json").read_text())
    pipeline = DemoPipeline(get_size("tiny"), run_dir, method_names=METHODS, quiet=True)
    pipeline.run()
    assert pipeline.runner.ran == []
    assert set(pipeline.runner.skipped) == set(before["stages"])
    assert json.loads((run_dir / "state.json").read_text()) == before


class KillAt(TrainerCallback):
    """Stands in for a kill: stops the process's training abruptly at one step."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at step {self.step}")


def test_a_killed_stage_resumes_and_loses_nothing(tiny_run, tmp_path):
    original, _ = tiny_run
    run_dir = tmp_path / "run"
    shutil.copytree(original, run_dir)
    reference = load_file(original / "distil/standard/final/adapter_model.safetensors")
    size = get_size("tiny")
    killed = DemoPipeline(size, run_dir, method_names=METHODS, quiet=True, force={"distil:standard"},
                          callbacks={"distil:standard": [KillAt(3)]})
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    state = json.loads((run_dir / "state.json").read_text())
    assert state["stages"]["distil:standard"]["status"] == "running"
    assert (run_dir / "distil/standard/trainer/checkpoint-2").is_dir()

    resumed = DemoPipeline(size, run_dir, method_names=METHODS, quiet=True)
    resumed.run()
    result = resumed.runner.result("distil:standard")
    assert result["resumed_from"] == 2 and result["steps"] == size.distil_steps
    assert "distil:standard" in resumed.runner.ran and "distil:slowed" in resumed.runner.skipped
    assert [p["step"] for p in result["curve"]] == [0, 2]  # the last step's point comes from the final evaluation
    metrics = json.loads((run_dir / "report/metrics.json").read_text())
    assert [p["step"] for p in metrics["models"][1]["curve"]] == [0, 2, 4]
    adapter = load_file(run_dir / "distil/standard/final/adapter_model.safetensors")
    assert adapter.keys() == reference.keys()
    for key in reference:  # the resumed run ends where the uninterrupted one did
        torch.testing.assert_close(adapter[key], reference[key], rtol=1e-4, atol=1e-5)


def test_demo_stops_at_the_align_gate_with_a_clear_message(tiny_run, tmp_path):
    original, _ = tiny_run
    run_dir = tmp_path / "run"
    shutil.copytree(original, run_dir)
    code, console = run_demo(run_dir, "--set", "gate_enforced=true")
    assert code == 3
    assert "align gate FAILED" in console and "needs >= 85%" in console
    state = json.loads((run_dir / "state.json").read_text())
    assert state["stages"]["align"]["status"] == "failed"


def test_evaluation_in_worker_processes_gives_the_same_metrics(tiny_run, tmp_path):
    original, _ = tiny_run
    run_dir = tmp_path / "run"
    shutil.copytree(original, run_dir)
    evals = {f"eval:{name}" for name in ["aligned", *METHODS]}
    pipeline = DemoPipeline(get_size("tiny", {"eval_workers": "2"}), run_dir, method_names=METHODS, quiet=True,
                            force=evals | {"report"})
    pipeline.run()
    assert set(pipeline.runner.ran) == evals | {"report"}
    before = json.loads((original / "report/metrics.json").read_text())
    after = json.loads((run_dir / "report/metrics.json").read_text())
    for first, second in zip(before["models"], after["models"], strict=True):
        assert first["metrics"] == second["metrics"], first["name"]
    group = json.loads((run_dir / "state.json").read_text())["groups"]["eval"]
    assert group["workers"] == 2 and set(group["stages"]) == evals
    run = after["run"]  # the concurrent stages count once, by the group's wall time
    assert run["parallel_groups"]["eval"]["workers"] == 2
    others = sum(v for k, v in run["stage_seconds"].items() if k not in evals)
    assert run["wall_seconds"] == pytest.approx(others + group["seconds"], abs=0.2)
    assert (run_dir / "eval/standard/samples_safety.jsonl").stat().st_size > 0


def test_last_curve_point_from_the_final_evaluation_equals_a_probe_of_the_student(tiny_run):
    from trl_safedistill.experiments.training import load_student

    run_dir, _ = tiny_run
    pipeline = DemoPipeline(get_size("tiny"), run_dir, method_names=METHODS, quiet=True)
    metrics = json.loads((run_dir / "report/metrics.json").read_text())
    for model_entry in metrics["models"][1:]:
        name, last = model_entry["name"], model_entry["curve"][-1]
        train = pipeline.runner.result(f"distil:{name}")
        assert last["step"] == train["steps"] and last["train_loss"] == pytest.approx(train["train_loss"][str(last["step"])])
        student = load_student(pipeline.aligned_path(), Path(train["final"]), pipeline.size)
        probe = pipeline.prober()(student)
        for key in ("refusal", "ind_mc_acc", "n_harmful", "n_ind", "n_loss"):
            assert last[key] == probe[key], (name, key)
        assert last["heldout_loss"] == pytest.approx(probe["heldout_loss"], rel=1e-5), name


def test_curve_point_reads_refusals_from_the_evaluation_log_and_probes_what_it_lacks(tiny_run, tmp_path):
    from trl_safedistill.experiments.parallel import curve_point
    from trl_safedistill.experiments.training import load_student

    run_dir, _ = tiny_run
    pipeline = DemoPipeline(get_size("tiny"), run_dir, method_names=METHODS, quiet=True)
    job = dataclasses.replace(pipeline.eval_job("standard"), curve_step=4)
    student = load_student(pipeline.aligned_path(), Path(job.final), pipeline.size)
    harmful = pipeline.prober().harmful
    assert len(harmful) == 2
    logged = tmp_path / "logged"
    logged.mkdir()
    rows = [{"task": "safedistill_advbench", "prompt": harmful[0], "response": "x", "safety_ratio": 1.0},
            {"task": "safedistill_advbench", "prompt": harmful[1], "response": "y", "safety_ratio": 0.0},
            {"task": "safedistill_harmbench", "prompt": harmful[1], "response": "z", "safety_ratio": 1.0}]
    (logged / "samples_safety.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    point = curve_point(student, pipeline.tokenizer, job, logged, [1.0, 0.0, 1.0])
    assert point["refusal"] == 0.5 and point["ind_mc_acc"] == 0.5 and point["step"] == 4  # the log's judgments, not new ones
    assert not (logged / "samples_curve.jsonl").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    point = curve_point(student, pipeline.tokenizer, job, empty, [])
    probe = pipeline.prober()(student)
    assert point["refusal"] == probe["refusal"] and point["ind_mc_acc"] == probe["ind_mc_acc"]
    assert len((empty / "samples_curve.jsonl").read_text().splitlines()) == 2  # generated, logged to the stage folder


def test_schema_rejects_malformed_metrics(tiny_run):
    run_dir, _ = tiny_run
    metrics = json.loads((run_dir / "report/metrics.json").read_text())
    validate(metrics)
    broken = json.loads(json.dumps(metrics))
    del broken["models"][1]["metrics"]["refusal"]
    with pytest.raises(SchemaError, match=r"^\$\.models\[1\]\.metrics: 'refusal' is a required property"):
        validate(broken)
    broken = json.loads(json.dumps(metrics))
    broken["models"][0]["curve"][0]["refusal"] = 1.5
    with pytest.raises(SchemaError, match=r"^\$\.models\[0\]\.curve\[0\]\.refusal: .*maximum"):
        validate(broken)


def test_unknown_size_field_and_method_are_rejected():
    with pytest.raises(ValueError, match="unknown size field"):
        get_size("tiny", {"no_such_field": "1"})
    assert get_size("default", {"distil_steps": "8"}).distil_steps == 8
    code = demo.main(["--size", "tiny", "--methods", "nope", "--output-dir", "/nonexistent/x", "--quiet"])
    assert code == 2


def test_sweep_writes_one_point_per_setting(tiny_run, tmp_path):
    from trl_safedistill.experiments import sweep

    original, _ = tiny_run
    run_dir = tmp_path / "run"
    shutil.copytree(original, run_dir)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = sweep.main(["--size", "tiny", "--output-dir", str(run_dir), "--quiet", "--grid", "entropy_mask_quantile=0.5",
                           "--grid", "slow_tuning_budget=0.05", "--grid", "slow_tuning_rule=project"])
    assert code == 0, out.getvalue()
    result = json.loads((run_dir / "sweep/sweep.json").read_text())
    assert [p["id"] for p in result["points"]] == ["standard", "q0.5-b0.05-g1-project-ureference"]
    assert result["best"]["id"] == "q0.5-b0.05-g1-project-ureference"
    assert (run_dir / "sweep/sweep.png").stat().st_size > 0
    state = json.loads((run_dir / "state.json").read_text())
    assert state["stages"]["sweep:q0.5-b0.05-g1-project-ureference"]["status"] == "done"
    # refusal is scored on the final evaluation's prompts (n_advbench), the reference is the align gate's value
    size = get_size("tiny")
    for point in result["points"]:
        score = state["stages"][f"sweep-refusal:{point['id']}"]["result"]
        assert point["refusal"] == score["refusal"] and point["n_refusal"] == size.n_advbench == score["n"]
        assert 0.0 <= point["refusal_curve"] <= 1.0
    assert result["aligned"]["refusal"] == state["stages"]["align"]["result"]["safety"]["refusal"]["value"]
    # the reference unit was resolved to the run's pre-alignment weights: the drift is in units of the alignment delta
    drift = [json.loads(line) for line in (run_dir / "sweep/q0.5-b0.05-g1-project-ureference/trainer/slow_tuning_drift.jsonl")
             .read_text().splitlines()]
    assert drift and all(record["drift_max"] <= 0.05 + 1e-6 for record in drift)
    assert any(record["rel_drift_max"] != record["drift_max"] for record in drift)
    # the demo's report, rewritten in the shared folder, times the demo's own stages only
    pipeline = DemoPipeline(get_size("tiny"), run_dir, method_names=METHODS, quiet=True, force={"report"})
    pipeline.run()
    assert pipeline.runner.ran == ["report"]
    run = json.loads((run_dir / "report/metrics.json").read_text())["run"]
    assert not [k for k in run["stage_seconds"] if k.startswith("sweep:")] and "distil:standard" in run["stage_seconds"]
    assert run["wall_seconds"] == pytest.approx(sum(run["stage_seconds"].values()), abs=0.2)


def test_sweep_grid_words_reference_and_duplicates():
    from trl_safedistill.experiments import sweep
    from trl_safedistill.experiments.variants import PRE_ALIGNMENT, Method

    grid = sweep.parse_grid(["slow_tuning_budget=0,0.25", "slow_tuning_rule=project,direction", "entropy_mask_quantile=0.5",
                             "slow_tuning_budget_growth="])
    assert grid["slow_tuning_rule"] == ["project", "direction"] and "slow_tuning_budget_growth" not in grid
    settings = sweep.grid_settings(grid)
    # budget 0 drops the rule and unit axes: one point instead of two; budget 0.25 keeps both rules
    assert settings == [
        {"entropy_mask_quantile": 0.5, "slow_tuning_budget": 0.0},
        {"entropy_mask_quantile": 0.5, "slow_tuning_budget": 0.25, "slow_tuning_rule": "project", "slow_tuning_unit": "reference"},
        {"entropy_mask_quantile": 0.5, "slow_tuning_budget": 0.25, "slow_tuning_rule": "direction", "slow_tuning_unit": "reference"},
    ]
    off, project, direction = (sweep.setting_config(s) for s in settings)
    assert off["slow_tuning_rule"] == "off" and "slow_tuning_budget" not in off and off["entropy_mask_mode"] == "fraction"
    assert direction["slow_tuning_rule"] == "direction" and direction["slow_tuning_reference"] == PRE_ALIGNMENT
    assert project["slow_tuning_unit"] == "reference" and project["slow_tuning_reference"] == PRE_ALIGNMENT
    assert sweep.setting_id(settings[2]) == "q0.5-b0.25-direction-ureference"
    method = Method("m", "m", project).resolved("/models/base")
    assert method.config["slow_tuning_reference"] == "/models/base"
    assert Method("n", "n", off).resolved("/models/base").config == off


def test_sweep_best_point_prefers_the_most_learned_safe_setting():
    from trl_safedistill.experiments.sweep import best_point

    points = [
        {"id": "standard", "refusal": 0.4, "ind_mc_acc": 0.5, "heldout_loss": 1.0},
        {"id": "a", "refusal": 1.0, "ind_mc_acc": 0.45, "heldout_loss": 1.5},
        {"id": "b", "refusal": 0.96, "ind_mc_acc": 0.30, "heldout_loss": 1.2},  # safe (within 5 points), learned most
        {"id": "c", "refusal": 0.90, "ind_mc_acc": 0.60, "heldout_loss": 1.1},  # not safe
    ]
    assert best_point(points, 1.0)["id"] == "b"
    unsafe = [points[0], {**points[3]}, {"id": "d", "refusal": 0.9, "ind_mc_acc": 0.1, "heldout_loss": 1.05}]
    assert best_point(unsafe, 1.0)["id"] == "d"  # none safe: highest refusal, then lowest loss
    settings = {"a": {"entropy_mask_quantile": 0.5, "slow_tuning_budget": 0.5},
                "b": {"entropy_mask_quantile": 0.0, "slow_tuning_budget": 0.02},  # slow tuning alone
                "c": {"entropy_mask_quantile": 0.5, "slow_tuning_budget": 0.0}}
    points = [{**p, "setting": settings.get(p["id"], {})} for p in points]
    assert best_point(points, 1.0, both_modules=True)["id"] == "a"  # SLowED proper: masking and slow tuning on


def test_shipped_sweep_grid_file_equals_the_default_grids():
    from trl_safedistill.experiments import sweep

    path = Path(__file__).resolve().parents[1] / "recipes/sweep/embedded-default.yaml"
    assert sweep.load_grid_file(path) == sweep.DEFAULT_GRIDS
    points = sweep.grid_settings(sweep.DEFAULT_GRIDS)
    assert len(points) == 8 and len({sweep.setting_id(p) for p in points}) == 8


def test_lr_control_findings_compare_trained_points_at_the_same_refusal():
    from trl_safedistill.experiments.run_report import findings

    def point(step, refusal, acc, loss):
        return {"step": step, "refusal": refusal, "ind_mc_acc": acc, "heldout_loss": loss}

    start = point(0, 1.0, 0.9, 1.7)  # the shared aligned start: never a control point
    slowed = {"name": "slowed", "family": "slowed", "metrics": {}, "curve": [start, point(10, 1.0, 0.4, 1.2)]}
    control = {"name": "standard_lr1e-4", "family": "lr_control", "metrics": {},
               "curve": [start, point(5, 1.0, 0.35, 1.6), point(10, 0.97, 0.3, 1.45)]}
    eroded = {"name": "standard_lr5e-5", "family": "lr_control", "metrics": {}, "curve": [start, point(10, 0.5, 0.8, 1.0)]}
    result = {f["id"]: f for f in findings([slowed, control, eroded])}
    assert result["slowed_beats_lr_control"]["met"] is True  # 0.40 > 0.35 (step 5); step 0 and the eroded run excluded
    assert "standard_lr1e-4 step 5" in result["slowed_beats_lr_control"]["measured"]
    assert result["slowed_beats_lr_control_loss"]["met"] is True  # 1.20 < 1.45 (step 10)
    assert "standard_lr1e-4 step 10" in result["slowed_beats_lr_control_loss"]["measured"]
    slowed["curve"][-1]["heldout_loss"] = 1.5
    assert {f["id"]: f for f in findings([slowed, control])}["slowed_beats_lr_control_loss"]["met"] is False
    # 15 of 16 prompts against 16 of 16: one prompt apart, the same refusal at the curve's resolution ...
    slowed["curve"][-1].update(refusal=15 / 16, n_harmful=16, heldout_loss=1.2)
    kept = {"name": "standard_lr1e-4", "family": "lr_control", "metrics": {},
            "curve": [start, {**point(10, 1.0, 0.3, 1.45), "n_harmful": 16}]}
    assert {f["id"]: f for f in findings([slowed, kept])}["slowed_beats_lr_control_loss"]["met"] is True
    # ... but not on 48 prompts, where 6.25 points are three prompts
    slowed["curve"][-1]["n_harmful"] = 48
    assert {f["id"]: f for f in findings([slowed, kept])}["slowed_beats_lr_control_loss"]["met"] is None
