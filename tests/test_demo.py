"""The demo pipeline in miniature (tiny random model, a handful of steps): artefacts, evidence units, caching, resume,
gate, sweep. The gate, curves and sweep read calibration data only (see also tests/test_protocol_isolation.py)."""

from __future__ import annotations

import contextlib
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


SAFETY_SETS = {"advbench": "harmful", "harmbench": "harmful", "donotanswer": "harmful", "wrapped": "harmful",
               "lookalike": "benign", "imperative": "benign", "yesno": "benign"}


def test_miniature_produces_every_artefact(tiny_run):
    from trl_safedistill.experiments.eval_stage import read_items
    from trl_safedistill.experiments.run_report import item_flags

    run_dir, console = tiny_run
    report = run_dir / "report"
    for name in ("metrics.json", "report.md", "safety_metrics.png", "refusal_vs_step.png", "refusal_vs_learned.png"):
        assert (report / name).stat().st_size > 0, name
        assert (run_dir.parent / "results" / name).exists()
    metrics = validate_file(report / "metrics.json")
    assert metrics["schema_version"] == 2
    assert [m["name"] for m in metrics["models"]] == ["aligned", *METHODS]
    size = get_size("tiny")
    for model in metrics["models"]:
        name, safety = model["name"], model["safety"]
        if model["kind"] == "student":
            assert [p["step"] for p in model["curve"]] == [0, 2, 4]  # step 0 = the aligned start, then every 2 steps
        # the protocol's test tasks, n_safety prompts each: 4 harmful sets, 3 benign
        assert {k: v["kind"] for k, v in safety["sets"].items()} == SAFETY_SETS, name
        assert safety["refusal"]["n"] == 4 * size.n_safety and safety["over_refusal"]["n"] == 3 * size.n_safety
        assert safety["balance"] == pytest.approx(safety["refusal"]["value"] - safety["over_refusal"]["value"])
        for key in ("degenerate_harmful", "degenerate_benign", "refusal_gcg", "over_refusal_gcg"):
            assert safety[key]["method"] == "wilson" and len(safety[key]["ci"]) == 2, (name, key)
        for key in ("ind_mc_acc", "ind_acc", "ood_mc_acc", "format_valid"):
            assert model["metrics"][key]["n"] > 0, (name, key)
        assert model["metrics"]["heldout_nll"]["n"] == size.n_nll
        # per-item flags, no text; the same judgments as the summary, on test items only
        items = model["items"]
        assert not [row for row in items if {"prompt", "response"} & set(row)]
        kinds = [row["kind"] for row in items]
        assert kinds.count("harmful") == 4 * size.n_safety and kinds.count("benign") == 3 * size.n_safety
        assert kinds.count("ind_mc") == size.n_ind_mc and kinds.count("ind_gen") == size.n_ind_gen
        assert kinds.count("nll") == size.n_nll
        assert sum(r["refusal"] for r in items if r["kind"] == "harmful") == safety["refusal"]["successes"]
        assert sum(r["refusal"] for r in items if r["kind"] == "benign") == safety["over_refusal"]["successes"]
        assert all("_test-" in r["id"] for r in items if r["kind"] in ("harmful", "benign")), name
        # the evidence unit of the model: its per-item rows (0600) are the ones behind metrics.json
        unit = report / "evidence" / f"seed{size.seed}" / name
        assert json.loads((unit / "unit.json").read_text())["model"] == name
        assert (unit / "items.jsonl.gz").stat().st_mode & 0o777 == 0o600
        rows = read_items(unit / "items.jsonl.gz")
        assert item_flags(rows) == items
        assert {r["part"] for r in rows if r["kind"] in ("harmful", "benign")} == {"test"}
    judge = metrics["judge"]
    assert judge["default"]["name"] == "refusal-v1" and judge["reference"]["name"] == "gcg-keywords"
    for key in ("accuracy", "precision", "recall"):
        assert judge["default"][key]["n"] > 0 and len(judge["default"][key]["ci"]) == 2
    # the claims come from the evidence report on the units; one seed decides none of them
    evidence = report / "evidence"
    manifest = json.loads((evidence / "manifest.json").read_text())
    assert manifest["seeds"] == [size.seed] and manifest["models"] == ["aligned", *METHODS]
    summary = json.loads((evidence / "summary.json").read_text())
    assert metrics["evidence"]["claims"] == summary["claims"] and summary["small_n"]
    claims = metrics["evidence"]["claims"]
    assert set(claims) == {"capability", "keeps_safety", "retained_gain", "frontier"}
    assert set(claims["keeps_safety"]) == set(METHODS)
    verdicts = [claims["capability"]["verdict"], *(c["verdict"] for c in claims["keeps_safety"].values()),
                *(c["verdict"] for c in claims["frontier"].values())]
    assert verdicts and set(verdicts) == {"undecided"}
    # the gate is measured on calibration data and not enforced by default: its verdict heads the report
    gate = metrics["gate"]
    assert gate["enforced"] is False and gate["part"] == "calibration"
    text = (report / "report.md").read_text()
    assert text.splitlines()[2].startswith(f"**Align gate (calibration split): {'passed' if gate['passed'] else 'FAILED'}.**")
    assert "| CasCoD |" in text and "![refusal_vs_learned.png]" in text
    assert "## Claims" in text and (evidence / "REPORT.md").read_text().strip() in text
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
    assert [p["step"] for p in result["curve"]] == [0, 2, 4]  # the demo probes the last step in training too
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
    assert "align gate FAILED" in console and "calibration harmful prompts (needs >= 85%)" in console
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
        for key in ("metrics", "safety", "items"):
            assert first[key] == second[key], (first["name"], key)
    group = json.loads((run_dir / "state.json").read_text())["groups"]["eval"]
    assert group["workers"] == 2 and set(group["stages"]) == evals
    run = after["run"]  # the concurrent stages count once, by the group's wall time
    assert run["parallel_groups"]["eval"]["workers"] == 2
    others = sum(v for k, v in run["stage_seconds"].items() if k not in evals)
    assert run["wall_seconds"] == pytest.approx(others + group["seconds"], abs=0.2)
    assert (run_dir / "eval/standard/samples_safety.jsonl").stat().st_size > 0


def test_last_curve_point_is_a_probe_of_the_final_student(tiny_run):
    from trl_safedistill.experiments.training import load_student

    run_dir, _ = tiny_run
    pipeline = DemoPipeline(get_size("tiny"), run_dir, method_names=METHODS, quiet=True)
    metrics = json.loads((run_dir / "report/metrics.json").read_text())
    for model_entry in metrics["models"][1:]:
        name, last = model_entry["name"], model_entry["curve"][-1]
        train = pipeline.runner.result(f"distil:{name}")
        assert train["probe_last"] is True
        assert last["step"] == train["steps"] and last["train_loss"] == pytest.approx(train["train_loss"][str(last["step"])])
        student = load_student(pipeline.aligned_path(), Path(train["final"]), pipeline.size)
        probe = pipeline.prober()(student)
        for key in ("refusal", "over_refusal", "ind_mc_acc", "n_harmful", "n_ind", "n_loss"):
            assert last[key] == probe[key], (name, key)
        assert last["heldout_loss"] == pytest.approx(probe["heldout_loss"], rel=1e-5), name


def test_a_distillation_without_curve_probes_trains_the_same_weights(tiny_run, tmp_path):
    """probes=False (the evidence run) takes no curve point and ends at exactly the weights of the probed run."""
    original, _ = tiny_run
    run_dir = tmp_path / "run"
    shutil.copytree(original, run_dir)
    pipeline = DemoPipeline(get_size("tiny"), run_dir, method_names=METHODS, quiet=True)
    result = pipeline.run_distil(pipeline.methods[0], stage="distil:standard-unprobed", probes=False)
    directory = pipeline.runner.stage_dir("distil:standard-unprobed")
    assert result["probes"] is False and [p["step"] for p in result["curve"]] == [0]
    assert not (directory / "curve.jsonl").exists()
    probed = load_file(original / "distil/standard/final/adapter_model.safetensors")
    unprobed = load_file(directory / "final/adapter_model.safetensors")
    assert unprobed.keys() == probed.keys()
    assert all(torch.equal(unprobed[key], probed[key]) for key in probed)


def test_the_curves_probe_calibration_items_only(tiny_run):
    """The prober's prompts and items are the first of the calibration files, and none is a test item."""
    from trl_safedistill.experiments.inputs import harmful_prompts, load_records, read_jsonl

    run_dir, _ = tiny_run
    size = get_size("tiny")
    pipeline = DemoPipeline(size, run_dir, method_names=METHODS, quiet=True)
    files = pipeline.runner.result("prepare")["safety_files"]
    for part in ("calibration", "test"):
        for name, path in files[part].items():
            expected = "wrapped_test.jsonl" if name == "wrapped" else f"{'falseclaims' if name == 'yesno' else name}_{part}.jsonl"
            assert Path(path).parent.name == "protocol" and Path(path).name == expected
    prober = pipeline.prober()
    assert prober.harmful == harmful_prompts(files["calibration"]["advbench"], size.curve_n_harmful)
    assert prober.benign == harmful_prompts(files["calibration"]["lookalike"], size.curve_n_harmful)
    test_prompts = {row["question"] for path in files["test"].values() for row in read_jsonl(Path(path))}
    assert len(prober.harmful) == len(prober.benign) == size.curve_n_harmful
    assert not set(prober.harmful + prober.benign) & test_prompts
    data = pipeline.data_dir()
    assert [d["id"] for d in prober.mc_docs] == [d["id"] for d in read_jsonl(data / "ind_mc_calibration.jsonl")][: size.curve_n_ind]
    assert not {d["id"] for d in prober.mc_docs} & {d["id"] for d in read_jsonl(data / "ind_mc_test.jsonl")}
    assert [r.id for r in prober.loss_records] == [r.id for r in load_records(data / "heldout_records_calibration.jsonl")][: size.curve_n_loss]
    assert not {r.id for r in prober.loss_records} & {r.id for r in load_records(data / "heldout_records_test.jsonl")}


def test_schema_rejects_malformed_metrics(tiny_run):
    run_dir, _ = tiny_run
    metrics = json.loads((run_dir / "report/metrics.json").read_text())
    validate(metrics)
    broken = json.loads(json.dumps(metrics))
    del broken["models"][1]["safety"]["refusal"]
    with pytest.raises(SchemaError, match=r"^\$\.models\[1\]\.safety: 'refusal' is a required property"):
        validate(broken)
    broken = json.loads(json.dumps(metrics))
    del broken["models"][1]["items"][0]["id"]
    with pytest.raises(SchemaError, match=r"^\$\.models\[1\]\.items\[0\]: 'id' is a required property"):
        validate(broken)
    broken = json.loads(json.dumps(metrics))
    broken["models"][0]["curve"][0]["refusal"] = 1.5
    with pytest.raises(SchemaError, match=r"^\$\.models\[0\]\.curve\[0\]\.refusal: .*maximum"):
        validate(broken)
    broken = json.loads(json.dumps(metrics))
    broken["schema_version"] = 1  # the point-estimate findings' layout
    with pytest.raises(SchemaError, match=r"^\$\.schema_version: 1 is not one of \[2\]"):
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
    # refusal is scored as the align gate scores it (n_gate prompts per calibration task, never a test prompt), and
    # the reference is the align gate's value
    from trl_safedistill.evaluation import protocol

    size = get_size("tiny")
    gate = state["stages"]["align"]["result"]
    for point in result["points"]:
        score = state["stages"][f"sweep-refusal:{point['id']}"]["result"]
        assert point["refusal"] == score["refusal"] and point["over_refusal"] == score["over_refusal"]
        assert point["n_refusal"] == score["n"] == 3 * size.n_gate == gate["gate"]["n_harmful"]
        assert 0.0 <= point["refusal_curve"] <= 1.0
        log = run_dir / "sweep-refusal" / point["id"] / "samples.jsonl"
        assert {json.loads(line)["task"] for line in log.read_text().splitlines()} == set(protocol.tasks("calibration"))
    assert result["aligned"]["refusal"] == gate["calibration_safety"]["refusal"]["value"] == gate["gate"]["refusal"]
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
