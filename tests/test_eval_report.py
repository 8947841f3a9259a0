"""evaluate_model on a loaded model, the bootstrap CIs, and the report files of `trl-safedistill eval`."""

from __future__ import annotations

import json

import pytest

from trl_safedistill.evaluation.cli import _row_name
from trl_safedistill.evaluation.report import (
    NO_ITEMS_NOTE,
    OTHER_ITEMS_NOTE,
    compression_section,
    load_compression_stats,
    markdown_table,
    write_report,
)
from trl_safedistill.evaluation.stats import bootstrap_ci

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread


class FakeGuard:
    """Scores every pair unsafe iff the response is not a refusal (a stand-in for trl_safedistill.guard)."""

    def __init__(self):
        self.pairs = []

    def score(self, pairs):
        self.pairs.extend(pairs)
        return [0.9 for _ in pairs]


def test_evaluate_model_on_a_loaded_model(tiny_model, tiny_tokenizer, tmp_path):
    from trl_safedistill.evaluation.run import evaluate_model

    tiny_model.train()
    guard = FakeGuard()
    log = tmp_path / "samples.jsonl"
    result = evaluate_model(tiny_model, tiny_tokenizer, "answer_first", ["safety", "ind", "ood"], limit=2,
                            max_gen_toks=3, guard=guard, sample_log=log, bootstrap_iters=200, online=False)
    assert tiny_model.training  # mode restored for the training loop
    summary = result["summary"]
    for key in ("safety_ratio", "safety_ratio_first32", "harmbench_safety_ratio", "over_refusal", "ind_acc", "ood_acc",
                "ind_mc_acc", "ood_mc_acc", "tokens_per_question"):
        assert summary[key]["value"] is not None, key
    assert summary["safety_ratio"]["n"] == 2 and summary["ind_mc_acc"]["n"] == 2
    assert 0 < summary["tokens_per_question"]["value"] <= 3
    assert summary["harmfulness"]["value"] == 1.0 and len(guard.pairs) == 4  # AdvBench + HarmBench pairs
    assert set(result["skipped"]) == {"safedistill_arc_easy", "safedistill_arc_challenge", "safedistill_agieval_en"}
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["task"] for r in rows} >= {"safedistill_advbench", "safedistill_bbh_mix"}
    assert all("response" in r and "prompt" in r for r in rows)


def test_report_files_and_table(tmp_path):
    entry = {"value": 0.5, "ci": [0.25, 0.75], "n": 8}
    rows = [
        {"name": "base", "summary": {"safety_ratio": entry, "harmfulness": None, "ind_acc": entry,
                                     "tokens_per_question": {"value": 12.5, "ci": None, "n": 8}},
         "skipped": {"safedistill_arc_easy": "offline"}},
        {"name": "adapter", "summary": {"safety_ratio": {"value": 1.0, "ci": [1.0, 1.0], "n": 8}, "ind_acc": entry}},
    ]
    table = markdown_table(rows)
    assert "| base | 50.0 [25.0, 75.0] | n/a | 50.0 [25.0, 75.0] | 12.5 |" in table
    paths = write_report(rows, tmp_path)
    assert json.loads(paths["metrics"].read_text())["rows"][1]["name"] == "adapter"
    assert "compression" not in json.loads(paths["metrics"].read_text())  # no compressed row, no section
    assert "Rationale compression" not in paths["report"].read_text()
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "`safedistill_arc_easy`: offline" in paths["report"].read_text()


def test_eval_command_compares_base_and_adapter_without_printing_responses(tiny_model_dir, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trl_safedistill.cli import main

    adapter_dir = tmp_path / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter_dir)
    out = tmp_path / "report"
    code = main(["eval", "--model", str(tiny_model_dir), "--adapter", f"{adapter_dir}@cascade", "--suites", "safety,ind",
                 "--limit", "2", "--max-gen-toks", "2", "--bootstrap", "100", "--output", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["format"] for row in metrics["rows"]] == ["standard", "cascade"]
    assert metrics["rows"][1]["adapter"] == str(adapter_dir)
    assert (out / "report.md").exists() and (out / "metrics.png").exists()
    console = capsys.readouterr().out
    samples = [json.loads(line) for path in out.glob("samples-*.jsonl") for line in path.read_text().splitlines()]
    harmful = [s for s in samples if s["task"] == "safedistill_advbench"]
    assert len(harmful) == 4
    assert all(s["prompt"] not in console for s in harmful)
    assert all(s["response"].strip() == "" or s["response"] not in console for s in harmful if len(s["response"].strip()) > 3)


def test_eval_command_compares_compressed_rows_with_the_baseline(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trl_safedistill.cli import main

    adapter_dir = tmp_path / "tokenskip"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter_dir)
    stats = tmp_path / "c.jsonl.report.json"
    stats.write_text(json.dumps({"records": 2, "tokens_per_rationale": {"1": 50.0, "0.5": 30.0}}))
    out = tmp_path / "report"
    code = main(["eval", "--model", str(tiny_model_dir), "--adapter", f"{adapter_dir}@compressed:0.5",
                 "--adapter", f"{adapter_dir}@compressed", "--compression-stats", f"{adapter_dir}={stats}",
                 "--suites", "ind", "--limit", "2", "--max-gen-toks", "2", "--bootstrap", "50", "--output", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    base, half, full = metrics["rows"]
    assert (half["name"], half["format"], half["compression_ratio"]) == (f"{_row_name(str(adapter_dir))}@g0.5", "compressed", 0.5)
    assert (full["name"].endswith("@g1"), full["compression_ratio"]) == (True, 1.0)  # --compression-ratio default 1
    assert base["compression_ratio"] is None and "compression_stats" not in base
    section = metrics["compression"]
    assert section["baseline"] == base["name"] == str(tiny_model_dir)
    first = section["rows"][0]
    assert (first["rationale_tokens_before"], first["rationale_tokens_after"], first["rationale_keep_ratio"]) == (50.0, 30.0, 0.6)
    assert section["rows"][1]["rationale_tokens_after"] == 50.0
    for key in ("ind_acc", "ind_mc_acc"):  # the same lm-eval items in every row: paired differences
        entry = first["metrics"][key]
        assert entry["n_paired"] == 2 and entry["diff_ci"] is not None, key
        assert entry["diff"] == pytest.approx(half["summary"][key]["value"] - base["summary"][key]["value"])
    assert first["tokens_per_question"]["value"] == half["summary"]["tokens_per_question"]["value"]
    assert "## Rationale compression" in (out / "report.md").read_text()
    assert (out / f"samples-{_row_name(half['name'])}.jsonl").exists()


def test_eval_command_rejects_bad_input(tmp_path, capsys):
    from trl_safedistill.cli import main

    assert main(["eval", "--model", "x", "--adapter", str(tmp_path / "missing"), "--output", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--suites", "safety,nope", "--output", str(tmp_path)]) == 2
    assert "unknown suite" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--adapter", f"{tmp_path}@standard:0.5", "--output", str(tmp_path)]) == 2
    assert "compressed format only" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--adapter", f"{tmp_path}@compressed:2", "--output", str(tmp_path)]) == 2
    assert "(0, 1]" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--compression-stats", str(tmp_path / "s.json"), "--output", str(tmp_path)]) == 2
    assert "no row is in the compressed format" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--compression-baseline", "nope", "--output", str(tmp_path)]) == 2
    assert "is not a row" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--adapter", f"{tmp_path}@compressed", "--adapter", f"{tmp_path}@compressed:1",
                 "--output", str(tmp_path)]) == 2
    assert "share a name" in capsys.readouterr().err


def test_override_files_replace_a_tasks_items(tiny_model, tiny_tokenizer, tmp_path):
    """The demo evaluates IND on its own held-out items through lm-eval metadata."""
    from trl_safedistill.evaluation.run import evaluate_model

    custom = tmp_path / "held_out.jsonl"
    docs = [{"id": f"mine-{i}", "task": "mine", "question": f"What is {i} + {i}?", "description": None, "options": None,
             "labels": None, "golds": [str(2 * i)], "gold_index": -1, "prompt_style": "format"} for i in range(3)]
    custom.write_text("".join(json.dumps(d) + "\n" for d in docs))
    log = tmp_path / "samples.jsonl"
    result = evaluate_model(tiny_model, tiny_tokenizer, "standard", ["ind"], limit=None, max_gen_toks=2,
                            override_files={"ind/_mix.jsonl": str(custom)}, tasks=["safedistill_bbh_mix"],
                            sample_log=log, bootstrap_iters=0)
    assert result["summary"]["ind_acc"]["n"] == 3
    assert {json.loads(line)["id"] for line in log.read_text().splitlines()} == {"mine-0", "mine-1", "mine-2"}


def metric(value, n, ci=None):
    return {"value": value, "ci": ci, "n": n}


def compression_rows(stats):
    """A standard baseline and two compressed rows, with the per-item scores of a run."""
    baseline = {
        "name": "std", "format": "standard", "compression_ratio": None,
        "summary": {"ind_acc": metric(0.75, 4, [0.25, 1.0]), "ood_acc": metric(0.5, 2, [0.0, 1.0]),
                    "ind_mc_acc": metric(0.5, 2), "tokens_per_question": metric(100.0, 6)},
        "items": {"ind_acc": {"ids": ["a", "b", "c", "d"], "values": [1.0, 0.0, 1.0, 1.0]},
                  "ind_mc_acc": {"ids": ["m1", "m2"], "values": [1.0, 0.0]}},
    }
    half = {
        "name": "tokenskip@g0.5", "format": "compressed", "compression_ratio": 0.5, "compression_stats": stats,
        "summary": {"ind_acc": metric(0.5, 4, [0.0, 1.0]), "ood_acc": metric(0.0, 2, [0.0, 0.0]),
                    "ind_mc_acc": metric(1.0, 2), "tokens_per_question": metric(40.0, 6)},
        # same items in another order (pairs are matched by id); MC scored on other items; OOD without items
        "items": {"ind_acc": {"ids": ["d", "c", "b", "a"], "values": [1.0, 0.0, 0.0, 1.0]},
                  "ind_mc_acc": {"ids": ["m1", "m3"], "values": [1.0, 1.0]}},
    }
    full = {
        "name": "tokenskip@g1", "format": "compressed", "compression_ratio": 1.0, "compression_stats": stats,
        "summary": {"ind_acc": metric(1.0, 4), "tokens_per_question": metric(90.0, 6)},
        "items": {"ind_acc": {"ids": ["a", "b", "c", "d"], "values": [1.0, 1.0, 1.0, 1.0]}},
    }
    return [baseline, half, full]


def test_compression_section_numbers_match_hand_computed_values(tmp_path):
    path = tmp_path / "c.jsonl.report.json"
    path.write_text(json.dumps({"records": 3, "tokens_per_rationale": {"1": 120.0, "0.8": 99.0, "0.5": 66.0}}))
    stats = load_compression_stats(path)
    rows = compression_rows(stats)
    section = compression_section(rows, bootstrap_iters=500)
    assert section["baseline"] == "std"  # the first row in another format
    half, full = section["rows"]
    assert [half["name"], full["name"]] == ["tokenskip@g0.5", "tokenskip@g1"]
    assert (half["ratio"], half["stats"]) == (0.5, str(path))
    assert (half["rationale_tokens_before"], half["rationale_tokens_after"]) == (120.0, 66.0)
    assert half["rationale_keep_ratio"] == pytest.approx(66 / 120)
    assert (full["rationale_tokens_after"], full["rationale_keep_ratio"]) == (120.0, 1.0)
    assert half["tokens_per_question"] == {"value": 40.0, "baseline": 100.0, "ratio": pytest.approx(0.4)}

    ind = half["metrics"]["ind_acc"]
    assert (ind["value"], ind["baseline"], ind["n_paired"]) == (0.5, 0.75, 4)
    assert ind["diff"] == pytest.approx(-0.25)
    # paired by id: a 1-1, b 0-0, c 0-1, d 1-1 -> d = [0, 0, -1, 0]; never positive, so the CI's top is 0
    assert ind["diff_ci"] == bootstrap_ci([0.0, 0.0, -1.0, 0.0], 500)["ci"]
    # by hand: mean(d*) = -j/4 with j ~ Bin(4, 1/4); P(j = 0) = 0.32 -> top 0; P(j <= 2) = 0.95 < 0.975 -> bottom -3/4
    assert ind["diff_ci"] == pytest.approx([-0.75, 0.0])
    ood = half["metrics"]["ood_acc"]
    assert (ood["value"], ood["baseline"], ood["diff"], ood["diff_ci"]) == (0.0, 0.5, -0.5, None)
    assert ood["diff_ci_note"] == NO_ITEMS_NOTE and ood["ci"] == [0.0, 0.0] and ood["baseline_ci"] == [0.0, 1.0]
    mc = half["metrics"]["ind_mc_acc"]
    assert (mc["diff"], mc["diff_ci"], mc["diff_ci_note"]) == (0.5, None, OTHER_ITEMS_NOTE)
    assert "ood_mc_acc" not in half["metrics"]  # measured in neither row
    assert full["metrics"]["ind_acc"]["diff"] == pytest.approx(0.25)
    assert full["metrics"]["ind_acc"]["diff_ci"] == bootstrap_ci([0.0, 1.0, 0.0, 0.0], 500)["ci"]
    assert full["metrics"]["ind_acc"]["diff_ci"] == pytest.approx([0.0, 0.75])  # the mirror image of the above
    assert (full["metrics"]["ood_acc"]["value"], full["metrics"]["ood_acc"]["baseline"]) == (None, 0.5)
    assert full["metrics"]["ood_acc"]["diff"] is None  # not measured in the compressed row: no difference

    named = compression_section(rows, baseline="tokenskip@g1", bootstrap_iters=500)
    assert named["baseline"] == "tokenskip@g1" and [r["name"] for r in named["rows"]] == ["tokenskip@g0.5"]
    assert named["rows"][0]["metrics"]["ind_acc"]["diff"] == pytest.approx(-0.5)
    assert named["rows"][0]["tokens_per_question"]["ratio"] == pytest.approx(40 / 90)
    with pytest.raises(ValueError, match="not a row"):
        compression_section(rows, baseline="nope")
    assert compression_section(rows[:1]) is None


def test_compression_section_in_report_files(tmp_path):
    path = tmp_path / "stats.json"
    path.write_text(json.dumps({"records": 3, "tokens_per_rationale": {"1": 120.0, "0.5": 66.0}}))
    rows = compression_rows(load_compression_stats(path))
    paths = write_report(rows, tmp_path / "out", bootstrap_iters=500)
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["compression"] == json.loads(json.dumps(compression_section(rows, bootstrap_iters=500)))
    report = paths["report"].read_text()
    assert "## Rationale compression" in report
    ci = bootstrap_ci([0.0, 0.0, -1.0, 0.0], 500)["ci"]
    ind_cell = f"50.0 [0.0, 100.0] (Δ -25.0 [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}])"
    section = report[report.index("## Rationale compression"):]
    line = next(li for li in section.splitlines() if li.startswith("| tokenskip@g0.5 |"))
    assert line.startswith("| tokenskip@g0.5 | 0.5 | 120.0 -> 66.0 (55%) | 40.0 (x0.40) | " + ind_cell + " | 0.0 [0.0, 0.0] (Δ -50.0*) |")
    assert "| std (baseline) | | | 100.0 | 75.0 [25.0, 100.0] | 50.0 [0.0, 100.0] | 50.0 |" in section
    assert NO_ITEMS_NOTE in report and OTHER_ITEMS_NOTE in report
    with pytest.raises(ValueError, match="tokens_per_rationale"):
        (tmp_path / "bad.json").write_text("{}")
        load_compression_stats(tmp_path / "bad.json")
