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
        assert all(r.get("part", "test") == "test" for r in rows)
        # the controls skip exact-match generation; the methods keep it
        assert any(r["kind"] == "ind_gen" for r in rows) == (unit["family"] not in ("lower_lr", "early_stop"))
    assert families == {"aligned": "aligned", "standard": "standard", "slowed": "slowed",
                        "standard_refusal_mix": "refusal_mix", "standard_lr1e-3": "lower_lr", "standard_step2": "early_stop"}
    assert json.loads((results / "seed0" / "standard_step2" / "unit.json").read_text())["step"] == 2
    manifest = json.loads((results / "manifest.json").read_text())
    assert manifest["seeds"] == [0] and set(manifest["models"]) == expected and "0" in manifest["gate"]
    assert manifest["judge"]["default"]["name"] == "refusal-v1"

    # a second run on a fresh work folder (another machine) finds every unit committed and evaluates nothing
    calls = []
    monkeypatch.setattr(evidence.EvidenceRun, "evaluate", lambda self, *a, **k: calls.append(a))
    evidence.EvidenceRun("tiny", 0, tmp_path / "work2", results, overrides).run()
    assert calls == []
    summary = evidence.main(["report", str(results)])
    assert summary == 0 and (results / "REPORT.md").exists()
