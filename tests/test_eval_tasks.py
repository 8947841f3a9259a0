"""Every task config loads through lm-eval's TaskManager (include path) and runs with a small limit,
on a tiny random model (all offline configs) and on the embedded default (one config of each kind)."""

from __future__ import annotations

import logging

import pytest

from trl_safedistill.evaluation.hub import HUB_ONLY_REASON
from trl_safedistill.evaluation.run import eval_tasks_dir, plan_tasks, task_manager

OFFLINE_GROUPS = ["safedistill_safety", "safedistill_safety_protocol", "safedistill_safety_protocol_calibration", "safedistill_ind", "safedistill_ind_mc", "safedistill_ood", "safedistill_ood_mc"]
SINGLE_TASKS = ["safedistill_advbench_short", "safedistill_bbh_mix", "safedistill_bbh_mix_mc", "safedistill_mmlu_mix", "safedistill_mmlu_mix_mc"]
HUB_CONFIGS = ["safedistill_xstest", "safedistill_arc_easy", "safedistill_arc_challenge", "safedistill_agieval_en"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread



@pytest.fixture(scope="module")
def manager():
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return task_manager()


def offline_leaf_tasks(manager):
    names = [n for n in manager.all_subtasks if n.startswith("safedistill_")]
    hub = ("safedistill_xstest", "safedistill_arc", "safedistill_agieval")
    return sorted(n for n in names if not n.startswith(hub))


def test_every_config_is_indexed(manager):
    names = set(manager.all_tasks)
    assert set(OFFLINE_GROUPS + SINGLE_TASKS + HUB_CONFIGS) <= names
    leaves = offline_leaf_tasks(manager)
    # 14 BBH (the bbh-cot tasks) + 11 BBH multiple choice + MMLU + MMLU MC + 4 mixes + 4 safety tasks + 7 protocol
    # test tasks + 6 protocol calibration tasks
    assert len(leaves) == 14 + 11 + 1 + 1 + 4 + 4 + 7 + 6, leaves
    assert (eval_tasks_dir() / "safedistill_safety" / "_template_yaml").exists()


def run(lm, tasks, manager, limit=1):
    from lm_eval import simple_evaluate

    return simple_evaluate(lm, tasks=tasks, limit=limit, task_manager=manager, log_samples=True, bootstrap_iters=0,
                           gen_kwargs="max_gen_toks=2")


def test_all_offline_configs_run_on_a_tiny_random_model(tiny_model, tiny_tokenizer, manager):
    from trl_safedistill.evaluation.lm import SafeDistillLM

    lm = SafeDistillLM(pretrained=tiny_model, tokenizer=tiny_tokenizer, format="standard", batch_size=8)
    results = run(lm, OFFLINE_GROUPS + SINGLE_TASKS, manager)
    ran = {name for name in results["samples"]}
    assert set(offline_leaf_tasks(manager)) == ran
    for name in ran:
        metrics = results["results"][name]
        metric = next(k for k in ("safety_ratio,none", "over_refusal,none", "acc,none") if k in metrics)
        assert 0.0 <= metrics[metric] <= 1.0
        assert len(results["samples"][name]) == 1
    mc = results["samples"]["safedistill_bbh_mix_mc"][0]
    assert len(mc["resps"]) == len(mc["doc"]["options"])  # one log-likelihood per option


@pytest.mark.slow
def test_each_kind_of_config_runs_on_the_embedded_default(embedded_path, tiny_tokenizer, manager):
    import torch
    from transformers import AutoModelForCausalLM

    from trl_safedistill.evaluation.lm import SafeDistillLM

    model = AutoModelForCausalLM.from_pretrained(embedded_path, dtype=torch.float32).eval()
    lm = SafeDistillLM(pretrained=model, tokenizer=tiny_tokenizer, format="cascade", batch_size=4)
    tasks = ["safedistill_safety", "safedistill_bbh_mix", "safedistill_bbh_mix_mc", "safedistill_mmlu_mix_mc"]
    results = run(lm, tasks, manager)
    assert {"safedistill_advbench", "safedistill_harmbench", "safedistill_overrefusal"} <= set(results["samples"])
    for name, samples in results["samples"].items():
        assert len(samples) == 1
        response = samples[0]["resps"][0]
        if name == "safedistill_bbh_mix":
            assert "Therefore, the answer is" in response[0]  # cascade's second pass ran
    # a real model prefers some option: the two log-likelihoods differ
    scores = [r[0][0] for r in results["samples"]["safedistill_bbh_mix_mc"][0]["resps"]]
    assert len(set(scores)) == len(scores)


def test_hub_only_tasks_are_skipped_offline_with_a_reason():
    tasks, skipped = plan_tasks(["safety", "ind", "ood"], online=False)
    assert "safedistill_mmlu_mix" in tasks and "safedistill_arc_easy" not in tasks
    assert set(skipped) == {"safedistill_arc_easy", "safedistill_arc_challenge", "safedistill_agieval_en"}
    assert all(reason == HUB_ONLY_REASON for reason in skipped.values())
    online_tasks, none = plan_tasks(["ood"], online=True)
    assert "safedistill_agieval_en" in online_tasks and none == {}
    with pytest.raises(ValueError, match="unknown suite"):
        plan_tasks(["safety", "bogus"])


def test_agieval_document_ids_are_the_same_in_every_process():
    """Ids come from a content hash, not Python's salted hash(): two processes with different hash seeds agree."""
    import os
    import subprocess
    import sys

    code = ("from datasets import Dataset; from trl_safedistill.evaluation.tasks import agieval_process_docs; "
            "rows = agieval_process_docs(Dataset.from_list([{'query': 'Q: Which? A: Among A through B, the answer is', "
            "'choices': ['(A)one', '(B)two'], 'gold': [1]}])); print(rows[0]['id'])")
    ids = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip().splitlines()[-1]
        for seed in ("1", "2", "3")
    }
    assert len(ids) == 1 and len(next(iter(ids))) == 16
