"""Guard distillation: the HarmAug loss by hand, class-balanced sampling, a tiny BERT end to end, the judge."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from trl_safedistill.guard.distill import (
    DistillConfig,
    GuardDistillTrainer,
    PairCollator,
    distill_guard,
    distillation_loss,
    encode_pairs,
    minilm_embedded_path,
)


@pytest.fixture(scope="module")
def bert_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_embedded_path()))


def make_tiny_bert(vocab_size: int, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2)
    return BertForSequenceClassification(config)


def test_distillation_loss_equals_hand_computed_value():
    logits = torch.tensor([[1.0, 2.0], [0.5, -0.5]])
    labels = torch.tensor([1, 0])
    p_unsafe = torch.tensor([0.8, 0.3])
    q1 = [math.exp(1) / (math.exp(1) + math.exp(2)), math.exp(2) / (math.exp(1) + math.exp(2))]
    q2 = [math.exp(0.5) / (math.exp(0.5) + math.exp(-0.5)), math.exp(-0.5) / (math.exp(0.5) + math.exp(-0.5))]
    ce = -(math.log(q1[1]) + math.log(q2[0])) / 2
    kl1 = 0.2 * math.log(0.2 / q1[0]) + 0.8 * math.log(0.8 / q1[1])
    kl2 = 0.7 * math.log(0.7 / q2[0]) + 0.3 * math.log(0.3 / q2[1])
    expected = 0.5 * (ce + (kl1 + kl2) / 2)
    assert distillation_loss(logits, labels, p_unsafe).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.160445, abs=1e-6)
    # A hard teacher (p in {0, 1}) makes KL equal to CE: 0 log 0 = 0, no NaN.
    hard = distillation_loss(logits, labels, labels.float())
    assert hard.item() == pytest.approx(ce, rel=1e-6)


def _rows(n_safe: int, n_unsafe: int) -> list[dict]:
    rows = [{"prompt": f"question {i}", "response": "I'm sorry, I can't help with that.", "p_unsafe": 0.1,
             "label": 0} for i in range(n_safe)]
    rows += [{"prompt": f"question {i}", "response": "Sure, here is how you do it.", "p_unsafe": 0.9, "label": 1}
             for i in range(n_unsafe)]
    return rows


def _trainer(tmp_path, tokenizer, rows, **kwargs):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none",
                             remove_unused_columns=False, use_cpu=True, seed=1, **kwargs)
    return GuardDistillTrainer(model=make_tiny_bert(len(tokenizer)), args=args,
                               train_dataset=encode_pairs(tokenizer, rows, 64), data_collator=PairCollator(tokenizer),
                               processing_class=tokenizer)


def test_balanced_sampler_draws_both_classes_equally(tmp_path, bert_tokenizer):
    trainer = _trainer(tmp_path, bert_tokenizer, _rows(36, 4))  # 10% unsafe
    loader = trainer.get_train_dataloader()
    drawn = []
    for _ in range(60):  # 60 epochs x 40 draws
        for batch in loader:
            drawn += batch["labels"].tolist()
    fraction = sum(drawn) / len(drawn)
    assert len(drawn) == 60 * 40
    assert fraction == pytest.approx(0.5, abs=0.04)  # uniform sampling would give 0.1


def test_trainer_loss_is_the_distillation_loss(tmp_path, bert_tokenizer):
    trainer = _trainer(tmp_path, bert_tokenizer, _rows(1, 1))
    batch = PairCollator(bert_tokenizer)([trainer.train_dataset[0], trainer.train_dataset[1]])
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    expected = distillation_loss(outputs.logits, batch["labels"], batch["soft_labels"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert batch["soft_labels"].tolist() == pytest.approx([0.1, 0.9]) or batch["soft_labels"].tolist() == pytest.approx(
        [0.9, 0.1])


def test_distill_end_to_end_with_a_tiny_bert_then_judge(tmp_path, bert_tokenizer):
    from trl_safedistill.guard.judge import harmful_rate, load_judge

    rows = _rows(30, 10)
    random.Random(0).shuffle(rows)
    data = tmp_path / "aug.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["response"],
                                         "label": "unsafe" if r["label"] else "safe"}) + "\n" for r in rows[:10]))
    config = DistillConfig(data=[str(data)], output_dir=str(tmp_path / "guard"), max_length=64, batch_size=8,
                           learning_rate=5e-3, max_steps=16, val_fraction=0.25, eval_files=[str(extra)])
    metrics = distill_guard(config, model=make_tiny_bert(len(bert_tokenizer)), tokenizer=bert_tokenizer)
    assert metrics["held_out"]["n"] == 10 and metrics["held_out"]["positives"] == 2
    assert metrics["held_out"]["auprc"] == pytest.approx(1.0) and metrics["held_out"]["f1"] == pytest.approx(1.0)
    assert metrics["extra.jsonl"]["n"] == 10
    out = tmp_path / "guard"
    assert (out / "pr_curve.png").stat().st_size > 1000 and (out / "metrics.json").exists()
    judge = load_judge(f"distilled:{out}")
    scores = judge.score([("q", "Sure, here is how you do it."), ("q", "I'm sorry, I can't help with that.")])
    assert scores[0] > 0.5 > scores[1]
    assert harmful_rate(scores) == 0.5


# ------------------------------------------------------------------------------ no silent student fallback


def _raise(error: BaseException):
    def from_pretrained(*args, **kwargs):
        raise error

    return from_pretrained


def test_auto_student_that_fails_to_load_is_an_error_naming_model_and_cause(monkeypatch):
    """A broken DeBERTa (here: an unreadable cached config) must not silently become MiniLM."""
    import transformers

    from trl_safedistill.guard import distill

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        _raise(ValueError("Unrecognized model in microsoft/deberta-v3-large: no model_type")))
    with pytest.raises(ValueError) as caught:  # a UserError: one line at the command line
        chosen = distill.resolve_student("auto")
        pytest.fail(f"resolve_student('auto') fell back to {chosen} on a non-offline error")
    message = str(caught.value)
    assert type(caught.value).__name__ == "StudentLoadError"
    assert distill.DEBERTA in message and "ValueError" in message and "no model_type" in message
    assert "minilm-embedded" in message and "\n" not in message  # the fix, on one line


def test_auto_student_uses_minilm_only_when_the_hub_is_unreachable(monkeypatch, capsys):
    """The documented offline case: DeBERTa not cached and the hub unreachable -> the embedded MiniLM, said so."""
    import transformers
    from huggingface_hub.errors import LocalEntryNotFoundError

    from trl_safedistill.guard import distill

    def offline(*args, **kwargs):
        try:
            raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache")
        except LocalEntryNotFoundError as error:  # transformers wraps it as here (utils/hub.py)
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from error

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    assert distill.resolve_student("auto") == str(minilm_embedded_path())
    assert "offline" in capsys.readouterr().err
    # asked for by name: no hub call at all
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", _raise(AssertionError("hub called")))
    assert distill.resolve_student("minilm-embedded") == str(minilm_embedded_path())


def test_student_folder_that_fails_to_load_is_an_error_naming_it(tmp_path):
    from trl_safedistill.guard import distill

    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError) as caught:  # a UserError: one line at the command line
        distill.load_student(str(folder))
    assert type(caught.value).__name__ == "StudentLoadError"
    assert str(folder) in str(caught.value) and "failed to load" in str(caught.value)
