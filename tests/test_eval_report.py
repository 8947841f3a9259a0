"""evaluate_model on a loaded model, the bootstrap CIs, and the report files of `trl-safedistill eval`."""

from __future__ import annotations

import json

import pytest

from trl_safedistill.evaluation.report import markdown_table, write_report
from trl_safedistill.evaluation.stats import bootstrap_ci


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, two threads per op wait on each other (5x slower here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bootstrap_ci_brackets_the_mean_and_shrinks_with_n():
    small = bootstrap_ci([1, 0] * 5, iters=2000)
    large = bootstrap_ci([1, 0] * 200, iters=2000)
    assert small["value"] == large["value"] == 0.5
    assert small["ci"][0] < 0.5 < small["ci"][1]
    assert (large["ci"][1] - large["ci"][0]) < (small["ci"][1] - small["ci"][0]) / 3
    assert bootstrap_ci([1, 1, 1])["ci"] == [1.0, 1.0]
    assert bootstrap_ci([]) == {"value": None, "ci": None, "n": 0}


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


def test_eval_command_rejects_bad_input(tmp_path, capsys):
    from trl_safedistill.cli import main

    assert main(["eval", "--model", "x", "--adapter", str(tmp_path / "missing"), "--output", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--suites", "safety,nope", "--output", str(tmp_path)]) == 2
    assert "unknown suite" in capsys.readouterr().err


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
