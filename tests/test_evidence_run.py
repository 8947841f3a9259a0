"""The evidence runner writes one unit per (seed, model) as each finishes and never reruns a unit that exists."""

from __future__ import annotations

import gzip
import json

import pytest

from trl_safedistill.experiments import evidence


@pytest.mark.slow
def test_tiny_evidence_run_writes_every_unit_then_skips_them(tmp_path, monkeypatch):
    overrides = {"lower_lrs": "1e-3", "keep_checkpoints": "true", "distil_steps": "4", "curve_every": "2"}
    results = tmp_path / "results"
    run = evidence.EvidenceRun("tiny", 0, tmp_path / "work", results, overrides)
    run.run()
    expected = {"aligned", "standard", "slowed", "standard_refusal_mix", "standard_lr1e-3", "standard_step2"}
    assert {p.name for p in (results / "seed0").iterdir()} == expected
    families = {}
    for name in expected:
        unit = json.loads((results / "seed0" / name / "unit.json").read_text())
        families[name] = unit["family"]
        assert unit["seed"] == 0 and unit["model"] == name
        items = results / "seed0" / name / "items.jsonl.gz"
        assert items.stat().st_mode & 0o777 == 0o600
        rows = [json.loads(line) for line in gzip.open(items, "rt")]
        assert {r["kind"] for r in rows} >= {"harmful", "benign", "nll"}
        if run.pipeline.runner.result("prepare")["ood"]["available"]:  # the OOD items, one row each
            assert sum(r["kind"] == "ood_mc" for r in rows) == 2
        assert all(r.get("part", "test") == "test" for r in rows)
        # the controls skip exact-match generation; the methods keep it
        assert any(r["kind"] == "ind_gen" for r in rows) == (unit["family"] not in ("lower_lr", "early_stop"))
    assert families == {"aligned": "aligned", "standard": "standard", "slowed": "slowed",
                        "standard_refusal_mix": "refusal_mix", "standard_lr1e-3": "lower_lr", "standard_step2": "early_stop"}
    assert json.loads((results / "seed0" / "standard_step2" / "unit.json").read_text())["step"] == 2
    # the distillations take no curve point (the report reads none; the weights are the same, tests/test_demo.py)
    assert json.loads((results / "seed0" / "standard" / "unit.json").read_text())["train"]["curve_probes"] is False
    assert not (tmp_path / "work" / "seed0" / "distil" / "standard" / "curve.jsonl").exists()
    manifest = json.loads((results / "manifest.json").read_text())
    assert manifest["seeds"] == [0] and set(manifest["models"]) == expected and "0" in manifest["gate"]
    assert manifest["judge"]["default"]["name"] == "refusal-v1"

    # a second run on a fresh work folder (another machine) finds every unit committed and evaluates nothing: not even
    # the data preparation and the alignment run, whose results no unit needs any more
    calls = []
    monkeypatch.setattr(evidence.EvidenceRun, "evaluate", lambda self, *a, **k: calls.append(a))
    from trl_safedistill.experiments.demo_pipeline import DemoPipeline

    monkeypatch.setattr(DemoPipeline, "run_start", lambda self: calls.append("run_start"))
    evidence.EvidenceRun("tiny", 0, tmp_path / "work2", results, overrides).run()
    assert calls == []
    assert json.loads((results / "manifest.json").read_text())["gate"] == manifest["gate"]  # the gate kept
    # a unit missing again (say, deleted by hand): the seed's stages run first, then that unit alone
    import shutil

    shutil.rmtree(results / "seed0" / "standard_lr1e-3")

    def stop(self):
        raise RuntimeError("stages started")

    monkeypatch.setattr(DemoPipeline, "run_start", stop)
    with pytest.raises(RuntimeError, match="stages started"):
        evidence.EvidenceRun("tiny", 0, tmp_path / "work3", results, overrides).run()
    summary = evidence.main(["report", str(results)])
    assert summary == 0 and (results / "REPORT.md").exists()


def _run_with_gate(tmp_path, size="tiny", overrides=None, **kwargs):
    run = evidence.EvidenceRun(size, 0, tmp_path / "work", tmp_path / "results", overrides or {}, **kwargs)
    gate = {"passed": False, "message": "m", "refusal": 0.5, "over_refusal": 0.5, "lookalike_over_refusal": 0.5}
    run.pipeline.runner.result = lambda stage: {"gate": gate}  # write_manifest reads only the align gate
    return run


def test_results_folder_refuses_units_of_other_settings(tmp_path, monkeypatch):
    from trl_safedistill.errors import UserError

    monkeypatch.setattr("trl_safedistill.evaluation.protocol.judge_agreement", lambda *a, **k: {"name": "x"})
    _run_with_gate(tmp_path).write_manifest(["aligned"])
    manifest = tmp_path / "results" / "manifest.json"
    assert json.loads(manifest.read_text())["settings"]["distil_steps"] == 4
    _run_with_gate(tmp_path, planned_seeds=(0, 1, 2)).write_manifest(["aligned", "standard"])  # same settings: accepted
    assert json.loads(manifest.read_text())["models"] == ["aligned", "standard"]  # models merged
    assert json.loads(manifest.read_text())["seeds"] == [0, 1, 2]  # every seed the call plans, before seeds 1-2 ran
    before = manifest.read_text()
    with pytest.raises(UserError, match=r"manifest.json:1: field 'settings'.*distil_steps.*4.*5"):
        _run_with_gate(tmp_path, overrides={"distil_steps": "5"}).write_manifest(["aligned"])
    assert manifest.read_text() == before  # nothing written
    # a folder of data version 1 (its manifest predates the field) takes no unit of version 2
    old = json.loads(before)
    assert old["settings"].pop("data") == 2
    manifest.write_text(json.dumps(old))
    with pytest.raises(UserError, match=r"field 'settings'.*data None there, 2 now"):
        _run_with_gate(tmp_path).write_manifest(["aligned"])


def test_methods_must_include_standard_and_exist(tmp_path):
    with pytest.raises(ValueError, match="standard CoT is every comparison's reference"):
        evidence.EvidenceRun("tiny", 0, tmp_path / "w", tmp_path / "r", {}, methods=("slowed",))
    with pytest.raises(ValueError, match="unknown method"):
        evidence.EvidenceRun("tiny", 0, tmp_path / "w", tmp_path / "r", {}, methods=("standard", "slowd"))
    run = evidence.EvidenceRun("tiny", 0, tmp_path / "w", tmp_path / "r", {"lower_lrs": "1e-3"},
                               methods=("standard", "slowed"))
    assert [m.name for m in run.pipeline.methods] == ["standard", "slowed", "standard_lr1e-3"]
    calls = []
    run.pipeline.run_start = lambda: None
    run.write_manifest = calls.append  # the planned models: what the report lists as missing when a run is cut short
    run.done = lambda name: True  # every unit present: nothing trains
    run.run()
    assert calls == [["aligned", "standard", "slowed", "standard_lr1e-3", "standard_step2"]]


def test_each_seed_generates_its_own_exact_match_items(tmp_path, monkeypatch):
    """ind_gen_by_seed: seeds 0-2 of the evidence size take disjoint slices of 100 test items (300 distinct), each
    covering every task; a seed past the end wraps around; the generation reads exactly that seed's slice."""
    from trl_safedistill.atomic import write_jsonl
    from trl_safedistill.experiments import eval_stage
    from trl_safedistill.experiments.sizes import get_size

    assert eval_stage.seed_items(list(range(10)), 1, 4) == [4, 5, 6, 7]
    assert eval_stage.seed_items(list(range(10)), 2, 4) == [8, 9, 0, 1]  # wraps
    assert eval_stage.seed_items(list(range(3)), 0, 5) == [0, 1, 2] and eval_stage.seed_items([], 0, 5) == []
    items = [{"id": f"t{i % 14}-{i}", "task": f"t{i % 14}"} for i in range(482)]  # interleaved like ind_gen_test.jsonl
    slices = [eval_stage.seed_items(items, seed, 100) for seed in (0, 1, 2)]
    ids = [d["id"] for s in slices for d in s]
    assert len(ids) == len(set(ids)) == 300 and all(len({d["task"] for d in s}) == 14 for s in slices)

    write_jsonl(tmp_path / "ind_gen_test.jsonl", items)
    seen = {}

    def fake_evaluate(model, tokenizer, fmt, limit, override_files, **kwargs):
        seen["limit"], seen["file"] = limit, override_files["ind/_mix.jsonl"]
        return {"summary": {}, "generation_items": []}

    monkeypatch.setattr("trl_safedistill.evaluation.run.evaluate_model", fake_evaluate)
    size = get_size("evidence", {"seed": 1})
    assert size.ind_gen_by_seed and size.n_ind_gen == 100
    eval_stage.ind_gen_rows(None, None, "standard", size, eval_stage.ind_gen_items_file(size, tmp_path, tmp_path / "unit"),
                            tmp_path / "unit")
    written = [json.loads(line)["id"] for line in open(seen["file"])]
    assert seen["limit"] == 100 and written == [d["id"] for d in slices[1]]
    tiny = get_size("tiny")
    eval_stage.ind_gen_rows(None, None, "standard", tiny, eval_stage.ind_gen_items_file(tiny, tmp_path, tmp_path / "unit2"),
                            tmp_path / "unit2")
    assert seen["file"] == str(tmp_path / "ind_gen_test.jsonl")  # other sizes: the first n_ind_gen, as before
