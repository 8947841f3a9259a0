"""The equal-effort calibration sweep (``trl-safedistill sweep --equal-effort``, issue 17 item 4): the declared ladders
(the same K for every family), the pre-declared selection rule on constructed points, and, on the tiny pipeline, every
family's points recorded in sweep.json; the same start then trains the opt-in methods (SLowED ablation, Safe LoRA,
AsFT) through the demo pipeline and its report."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest

from trl_safedistill.config import SafeDistillConfig
from trl_safedistill.experiments import sweep
from trl_safedistill.experiments.sizes import get_size
from trl_safedistill.experiments.variants import PRE_ALIGNMENT

FAMILIES = ["slowed", "direction", "safe_lora", "asft", "refusal_mix", "lower_lr"]
#: +1: a larger knob value is a stronger safety setting (the ladders run weak -> strong)
STRONGER = {"slowed": -1, "direction": -1, "safe_lora": +1, "asft": +1, "refusal_mix": +1, "lower_lr": -1}


def test_every_family_has_the_same_number_of_settings():
    assert list(sweep.EQUAL_EFFORT) == FAMILIES
    assert {family: len(settings) for family, settings in sweep.EQUAL_EFFORT.items()} == \
        dict.fromkeys(FAMILIES, sweep.EQUAL_EFFORT_K)
    assert sweep.EQUAL_EFFORT_K == 4


@pytest.mark.parametrize("family", FAMILIES)
def test_each_ladder_varies_one_knob_from_weak_to_strong(family):
    knob, settings = sweep.EQUAL_EFFORT_KNOB[family], sweep.EQUAL_EFFORT[family]
    fixed = [{k: v for k, v in s.items() if k != knob} for s in settings]
    assert all(f == sweep.EQUAL_EFFORT_FIXED[family] for f in fixed)
    values = [float(s[knob]) for s in settings]
    steps = [STRONGER[family] * (b - a) for a, b in zip(values, values[1:])]
    assert all(step > 0 for step in steps), values


def test_every_point_builds_a_valid_config_with_a_unique_id(tmp_path):
    size = get_size("default")
    ids = []
    for family, settings in sweep.EQUAL_EFFORT.items():
        for setting in settings:
            method = sweep.equal_effort_method(family, setting, size)
            ids.append(sweep.equal_effort_id(family, setting))
            assert method.name == f"sweep-{ids[-1]}"
            resolved = method.resolved("/models/base")
            assert PRE_ALIGNMENT not in resolved.config.values()
            config = SafeDistillConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **resolved.config)
            knob, value = sweep.EQUAL_EFFORT_KNOB[family], float(setting[sweep.EQUAL_EFFORT_KNOB[family]])
            if family == "slowed":
                assert (config.slow_tuning_rule, config.slow_tuning_unit, config.entropy_mask_mode) == \
                    ("project", "reference", "fraction")
                assert config.slow_tuning_budget == value and config.slow_tuning_reference == "/models/base"
            elif family == "direction":
                assert config.slow_tuning_rule == "direction" and config.entropy_mask_mode == "off"
                assert config.slow_tuning_budget == value and config.slow_tuning_reference == "/models/base"
            elif family == "safe_lora":
                assert config.safe_lora and config.safe_lora_threshold == value
                assert config.safe_lora_reference == "/models/base" and config.slow_tuning_rule == "off"
            elif family == "asft":
                assert config.asft and config.asft_lambda == value and config.asft_reference == "/models/base"
            elif family == "refusal_mix":
                assert method.refusal_mix_fraction == value and config.learning_rate == size.distil_lr
            else:
                assert knob == "lr_scale" and config.learning_rate == pytest.approx(size.distil_lr * value, rel=1e-2)
            if family != "lower_lr":
                assert config.learning_rate == size.distil_lr
    assert len(ids) == len(set(ids)) == 6 * sweep.EQUAL_EFFORT_K
    # the lower-lr ladder is the evidence size's lower-lr frontier, exactly
    evidence = get_size("evidence")
    lrs = [sweep.equal_effort_method("lower_lr", s, evidence).config["learning_rate"] for s in sweep.EQUAL_EFFORT["lower_lr"]]
    assert lrs == list(evidence.lower_lrs)


def test_slowed_and_direction_points_share_the_default_sweeps_stages():
    size = get_size("default")
    defaults = {sweep.setting_id(s): sweep.sweep_method(size, s) for s in sweep.grid_settings(sweep.DEFAULT_GRIDS)}
    shared = [s for s in sweep.EQUAL_EFFORT["slowed"] if sweep.equal_effort_id("slowed", s) in defaults]
    assert [s["slow_tuning_budget"] for s in shared] == [0.5, 0.25]  # the default grid's q 0.5 project points
    for setting in shared:  # the same method, so the same stage fingerprint: a run folder trains it once
        assert sweep.equal_effort_method("slowed", setting, size) == defaults[sweep.equal_effort_id("slowed", setting)]


def point(ident, refusal, over, loss, **extra):
    return {"id": ident, "refusal": refusal, "over_refusal": over, "heldout_loss": loss, **extra}


def test_selection_takes_the_lowest_loss_among_qualifying_points():
    points = [
        point("weak", 0.60, 0.20, 1.00),       # refusal more than 5 points below the start: out
        point("leaky", 0.80, 0.30, 1.05),      # over-refusal more than 5 points above the start: out
        point("good", 0.76, 0.25, 1.20),       # qualifies
        point("strong", 0.82, 0.18, 1.40),     # qualifies, learned less
    ]
    choice = sweep.choose_equal_effort(points, aligned_refusal=0.80, aligned_over_refusal=0.20)
    assert choice["qualified"] and choice["point"]["id"] == "good"
    # a tie on loss goes to the earlier point of the ladder
    tie = [point("a", 0.8, 0.2, 1.1), point("b", 0.9, 0.1, 1.1)]
    assert sweep.choose_equal_effort(tie, 0.8, 0.2)["point"]["id"] == "a"


def test_selection_boundaries_are_inclusive_despite_float_rounding():
    # 0.75 = 0.80 - 0.05 and 0.25 = 0.20 + 0.05 exactly on the boundary: both qualify (0.8 - 0.05 != 0.75 in floats)
    edge = [point("edge", 3 / 4, 1 / 4, 1.0), point("far", 0.9, 0.1, 1.5)]
    choice = sweep.choose_equal_effort(edge, 0.80, 0.20)
    assert choice["qualified"] and choice["point"]["id"] == "edge"
    # just past the boundary: out
    out = [point("past", 0.74, 0.20, 1.0), point("far", 0.9, 0.1, 1.5)]
    assert sweep.choose_equal_effort(out, 0.80, 0.20)["point"]["id"] == "far"


def test_selection_without_a_qualifying_point_takes_the_best_balance():
    points = [
        point("a", 0.50, 0.10, 1.0),  # balance 0.40
        point("b", 0.70, 0.20, 1.3),  # balance 0.50, loss 1.3
        point("c", 0.60, 0.10, 1.2),  # balance 0.50, loss 1.2: the tie goes to the lower loss
        point("d", 0.95, 0.60, 0.9),  # over-refuses: balance 0.35
    ]
    choice = sweep.choose_equal_effort(points, aligned_refusal=0.95, aligned_over_refusal=0.10)
    assert not choice["qualified"] and choice["point"]["id"] == "c"


def test_selection_refuses_points_it_cannot_rank():
    assert sweep.choose_equal_effort([], 0.9, 0.1) is None
    with pytest.raises(ValueError, match="'x' has no over_refusal"):
        sweep.choose_equal_effort([point("x", 0.9, None, 1.0)], 0.9, 0.1)


def test_unequal_ladders_and_grids_with_equal_effort_are_refused(tmp_path):
    with pytest.raises(ValueError, match="same number"):
        sweep.run_equal_effort(get_size("tiny"), tmp_path, ladders={"asft": [{"asft_lambda": 1.0}], "refusal_mix": []})
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = sweep.main(["--size", "tiny", "--equal-effort", "--grid", "slow_tuning_budget=0.1",
                           "--output-dir", str(tmp_path / "run")])
    assert code == 2 and "--equal-effort" in err.getvalue()
    assert not (tmp_path / "run").exists()
    for argv, message in ((["--commit"], "--commit needs --results"), (["--results", str(tmp_path / "r")], "belong to")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = sweep.main(["--size", "tiny", *([] if "belong" in message else ["--equal-effort"]), *argv,
                               "--output-dir", str(tmp_path / "run")])
        assert code == 2 and message in err.getvalue()
    assert not (tmp_path / "run").exists() and not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------- the tiny pipeline
OVERRIDES = {"distil_steps": "2"}
ONE_EACH = {family: settings[:1] for family, settings in sweep.EQUAL_EFFORT.items()}


@pytest.fixture(scope="module")
def equal_effort_run(tmp_path_factory):
    """The tiny pipeline's start and the equal-effort sweep on it, each family cut to its first (weakest) point; the
    points are also stored in ``<run>/../results`` (``--results``)."""
    run_dir = tmp_path_factory.mktemp("equal-effort") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = sweep.run_equal_effort(get_size("tiny", OVERRIDES), run_dir, quiet=True, ladders=ONE_EACH,
                                      results=run_dir.parent / "results")
    assert code == 0, out.getvalue()
    return run_dir, out.getvalue()


@pytest.mark.slow
def test_equal_effort_records_the_same_number_of_points_for_every_family(equal_effort_run):
    run_dir, console = equal_effort_run
    result = json.loads((run_dir / "sweep/equal_effort/sweep.json").read_text())
    counts = {family: sum(p["family"] == family for p in result["points"]) for family in FAMILIES}
    assert counts == dict.fromkeys(FAMILIES, 1) and result["k"] == 1
    assert (run_dir / "sweep/equal_effort/sweep.png").stat().st_size > 0
    assert result["reference"]["id"] == "standard" and result["rule"] == sweep.EQUAL_EFFORT_RULE
    state = json.loads((run_dir / "state.json").read_text())["stages"]
    gate = state["align"]["result"]["calibration_safety"]
    assert result["aligned"]["refusal"] == gate["refusal"]["value"]
    assert result["aligned"]["over_refusal"] == gate["over_refusal"]["value"]
    size = get_size("tiny", OVERRIDES)
    for p in result["points"]:
        # every point is a cached stage, scored on the calibration tasks as the align gate scores the start
        assert state[f"sweep:{p['id']}"]["status"] == "done" and state[f"sweep:{p['id']}"]["result"]["steps"] == 2
        score = state[f"sweep-refusal:{p['id']}"]["result"]
        assert (p["refusal"], p["over_refusal"], p["n_refusal"]) == (score["refusal"], score["over_refusal"], score["n"])
        assert p["n_refusal"] == 3 * size.n_gate
        assert p["value"] == ONE_EACH[p["family"]][0][p["knob"]]
    # the choice of each family follows the rule applied to the recorded points
    for family in FAMILIES:
        mine = [p for p in result["points"] if p["family"] == family]
        expected = sweep.choose_equal_effort(mine, result["aligned"]["refusal"], result["aligned"]["over_refusal"])
        chosen = result["chosen"][family]
        assert chosen["id"] == expected["point"]["id"] and chosen["qualified"] is expected["qualified"]
        assert f"{family}: {chosen['id']}" in console
    points = {p["family"]: p for p in result["points"]}
    # each family's student trained what it says: Safe LoRA projected at the end and its point is the saved student's
    safe_lora = points["safe_lora"]
    assert safe_lora["probed"] == "saved student" and state[f"sweep-probe:{safe_lora['id']}"]["status"] == "done"
    assert safe_lora["heldout_loss"] == state[f"sweep-probe:{safe_lora['id']}"]["result"]["heldout_loss"]
    report = json.loads((run_dir / "sweep" / safe_lora["id"] / "trainer" / "safe_lora.json").read_text())
    assert report["threshold"] == 0.1 and len(report["layers"]) > 0
    assert all(p["probed"] == "last step" for f, p in points.items() if f != "safe_lora")
    assert (run_dir / "sweep" / points["slowed"]["id"] / "trainer" / "slow_tuning_drift.jsonl").exists()
    assert points["refusal_mix"]["refusal_mix_fraction"] == 0.025
    assert points["lower_lr"]["config"]["learning_rate"] == pytest.approx(size.distil_lr * 0.5)
    logs = (run_dir / "sweep" / points["asft"]["id"] / "trainer").rglob("trainer_state.json")
    history = [entry for path in logs for entry in json.loads(path.read_text())["log_history"]]
    assert any("asft/penalty" in entry for entry in history)


@pytest.mark.slow
def test_stored_points_are_read_back_and_a_different_start_is_refused(equal_effort_run, tmp_path, monkeypatch):
    from trl_safedistill.errors import UserError
    from trl_safedistill.experiments.demo_pipeline import DemoPipeline

    run_dir, _ = equal_effort_run
    stored = run_dir.parent / "results"
    first = json.loads((run_dir / "sweep/equal_effort/sweep.json").read_text())
    ids = {"standard", *(p["id"] for p in first["points"])}
    assert {path.stem for path in (stored / "points").glob("*.json")} == ids
    assert json.loads((stored / "sweep.json").read_text()) == first and (stored / "sweep.png").stat().st_size > 0
    manifest = json.loads((stored / "manifest.json").read_text())
    assert manifest["aligned"] == {k: first["aligned"][k] for k in ("refusal", "over_refusal")}
    # a copy missing one point, on a fresh run folder (another machine): only that point trains again
    results = tmp_path / "results"
    shutil.copytree(stored, results)
    missing = next(p for p in first["points"] if p["family"] == "asft")
    (results / "points" / f"{missing['id']}.json").unlink()
    trained: list[str] = []
    original = DemoPipeline.run_distil

    def counting(self, method, *args, **kwargs):
        trained.append(kwargs.get("stage"))
        return original(self, method, *args, **kwargs)

    monkeypatch.setattr(DemoPipeline, "run_distil", counting)
    size = get_size("tiny", OVERRIDES)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert sweep.run_equal_effort(size, tmp_path / "run", quiet=True, ladders=ONE_EACH, results=results) == 0
    assert trained == [f"sweep:{missing['id']}"]
    again = json.loads((results / "sweep.json").read_text())
    assert [p["id"] for p in again["points"]] == [p["id"] for p in first["points"]]
    assert again["chosen"] == first["chosen"]
    assert (results / "points" / f"{missing['id']}.json").exists()
    # a manifest of another start (its aligned refusal differs) stops before anything trains
    manifest["aligned"]["refusal"] += 0.01
    (results / "manifest.json").write_text(json.dumps(manifest))
    trained.clear()
    with pytest.raises(UserError, match=r"manifest.json:1: field 'aligned'.*refusal"):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            sweep.run_equal_effort(size, tmp_path / "run", quiet=True, ladders=ONE_EACH, results=results)
    assert trained == []
    # and so does one of other size settings
    with pytest.raises(UserError, match=r"field 'settings'.*distil_steps"):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            sweep.run_equal_effort(get_size("tiny", {"distil_steps": "3"}), tmp_path / "run3", quiet=True,
                                   ladders=ONE_EACH, results=stored)
    # and so does a folder of data version 1 (its manifest predates the field)
    manifest = json.loads((stored / "manifest.json").read_text())
    assert manifest["settings"].pop("data") == 2
    (results / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"field 'settings'.*data None there, 2 now"):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            sweep.run_equal_effort(size, tmp_path / "run", quiet=True, ladders=ONE_EACH, results=results)
    assert trained == []


@pytest.mark.slow
def test_the_demo_trains_and_reports_the_opt_in_methods(equal_effort_run):
    from trl_safedistill.experiments.demo_pipeline import DemoPipeline
    from trl_safedistill.experiments.schema import validate_file

    run_dir, _ = equal_effort_run
    names = ["standard", "slowed_mask_only", "direction", "safe_lora", "asft"]  # slowed_slow_only: its config is tested in test_variants
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        pipeline = DemoPipeline(get_size("tiny", OVERRIDES), run_dir, method_names=names, quiet=True)
        report = pipeline.run()
    assert "prepare" not in pipeline.runner.ran and "align" not in pipeline.runner.ran  # the sweep's start, reused
    metrics = validate_file(report / "metrics.json")
    families = {m["name"]: m["family"] for m in metrics["models"]}
    assert families == {"aligned": "aligned", "standard": "standard", "slowed_mask_only": "ablation",
                        "direction": "direction", "safe_lora": "safe_lora", "asft": "asft"}
    for name in names:
        assert pipeline.runner.result(f"distil:{name}")["steps"] == 2
    safe_lora = pipeline.runner.stage_dir("distil:safe_lora")
    assert (safe_lora / "trainer" / "safe_lora.json").exists()
    # the evidence layout keeps the new families, and its report treats each new model as a method
    seed = get_size("tiny").seed
    for name, family in families.items():
        assert json.loads((report / "evidence" / f"seed{seed}" / name / "unit.json").read_text())["family"] == family
    assert set(metrics["evidence"]["claims"]["keeps_safety"]) == set(names)
    assert set(metrics["evidence"]["claims"]["frontier"]) == set(names) - {"standard"}
