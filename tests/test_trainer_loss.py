"""SafeDistillTrainer's loss against hand-computed cross-entropies, and gradient-accumulation invariance."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

from trl_safedistill.config import SafeDistillConfig
from trl_safedistill.dataset import tokenize_records
from trl_safedistill.formats import Segment
from trl_safedistill.records import RationaleRecord
from trl_safedistill.trainer import SafeDistillTrainer

from .conftest import make_tiny_model

RECORDS = [
    RationaleRecord(f"r{i}", f"What is {i} + {i + 1}?", f"{i} plus {i + 1} makes {2 * i + 1}.", str(2 * i + 1), "add")
    for i in range(8)
]


def config(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-2, max_steps=1,
        report_to=[], use_cpu=True, gradient_checkpointing=False, logging_steps=1, save_strategy="no",
        shuffle_dataset=False, dataloader_drop_last=False, seed=0,
    )
    defaults.update(kwargs)
    return SafeDistillConfig(**defaults)


def manual_nll(model, dataset):
    """Per-token NLL of every target token, by hand from full logits: list of (nll, segment) per row."""
    rows = []
    with torch.no_grad():
        for example in dataset:
            ids = torch.tensor([example["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            log_probs = torch.log_softmax(logits, dim=-1)
            targets = ids[0, 1:]
            segments = torch.tensor(example["segment_ids"][1:])
            nll = -log_probs[torch.arange(len(targets)), targets]
            rows.append((nll[segments != Segment.PROMPT], segments[segments != Segment.PROMPT]))
    return rows


def trainer_loss(trainer, dataset):
    batch = trainer.data_collator([dict(row) for row in dataset.select_columns(["input_ids", "labels", "segment_ids"])])
    trainer.model.eval()
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


@pytest.mark.parametrize("distill_format", ["standard", "answer_first"])
def test_pooled_loss_is_token_mean_and_matches_sft(tmp_path, tiny_tokenizer, distill_format):
    dataset = tokenize_records(RECORDS[:4], tiny_tokenizer, distill_format)
    model = make_tiny_model(len(tiny_tokenizer))
    trainer = SafeDistillTrainer(model, config(tmp_path, distill_format=distill_format), train_dataset=dataset,
                                 processing_class=tiny_tokenizer)
    rows = manual_nll(trainer.model, dataset)
    expected = torch.cat([nll for nll, _ in rows]).mean().item()
    assert trainer_loss(trainer, dataset) == pytest.approx(expected, rel=1e-5)
    # exactly TRL's own SFT loss on the same batch (no segment ids)
    batch = trainer.data_collator([dict(row) for row in dataset.select_columns(["input_ids", "labels"])])
    with torch.no_grad():
        sft = super(SafeDistillTrainer, trainer).compute_loss(trainer.model, batch).item()
    assert sft == pytest.approx(expected, rel=1e-5)


def test_cascade_loss_mixes_segment_means_with_alpha(tmp_path, tiny_tokenizer):
    dataset = tokenize_records(RECORDS[:3], tiny_tokenizer, "cascade")
    assert len(dataset) == 6
    model = make_tiny_model(len(tiny_tokenizer))
    alpha = 0.3
    trainer = SafeDistillTrainer(model, config(tmp_path, distill_format="cascade", cascade_alpha=alpha),
                                 train_dataset=dataset, processing_class=tiny_tokenizer)
    rows = manual_nll(trainer.model, dataset)
    nll = torch.cat([n for n, _ in rows])
    segments = torch.cat([s for _, s in rows])
    mean_r = nll[segments == Segment.RATIONALE].mean().item()
    mean_a = nll[segments == Segment.ANSWER].mean().item()
    assert trainer_loss(trainer, dataset) == pytest.approx((1 - alpha) * mean_r + alpha * mean_a, rel=1e-5)
    pooled = nll.mean().item()
    assert abs(pooled - ((1 - alpha) * mean_r + alpha * mean_a)) > 1e-4  # the mix is not the pooled mean


def test_record_dataset_is_validated_and_formatted_by_the_trainer(tmp_path, tiny_tokenizer):
    rows = [r.to_dict() for r in RECORDS[:2]]
    trainer = SafeDistillTrainer(make_tiny_model(len(tiny_tokenizer)), config(tmp_path, distill_format="cascade"),
                                 train_dataset=Dataset.from_list(rows), processing_class=tiny_tokenizer)
    assert len(trainer.train_dataset) == 4 and "segment_ids" in trainer.train_dataset.column_names
    bad = rows + [{**rows[0], "id": "bad", "rationale": ""}]
    with pytest.raises(ValueError, match="train dataset:3: field 'rationale': rationale is empty"):
        SafeDistillTrainer(make_tiny_model(len(tiny_tokenizer)), config(tmp_path), train_dataset=Dataset.from_list(bad),
                           processing_class=tiny_tokenizer)


@pytest.mark.parametrize("distill_format", ["standard", "cascade"])
def test_gradient_accumulation_gives_the_same_update(tmp_path, tiny_tokenizer, distill_format):
    dataset = tokenize_records(RECORDS[: 4 if distill_format == "standard" else 2], tiny_tokenizer, distill_format)
    assert len(dataset) == 4
    base = make_tiny_model(len(tiny_tokenizer), seed=1)
    results = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        model = copy.deepcopy(base)
        args = config(tmp_path / f"{batch_size}", distill_format=distill_format, per_device_train_batch_size=batch_size,
                      gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=1.0, max_grad_norm=0.0,
                      lr_scheduler_type="constant", warmup_steps=0)
        trainer = SafeDistillTrainer(model, args, train_dataset=dataset, processing_class=tiny_tokenizer)
        trainer.train()
        results.append({k: v.detach().clone() for k, v in trainer.model.named_parameters()})
    moved = 0.0
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, rtol=1e-4, atol=1e-6)
        moved = max(moved, (value - base.state_dict()[name]).abs().max().item())
    assert moved > 1e-4  # the step did move the weights


def test_per_segment_losses_are_logged(tmp_path, tiny_tokenizer):
    rows = [r.to_dict() for r in RECORDS[:4]]
    args = config(tmp_path, distill_format="cascade", max_steps=2, per_device_train_batch_size=4)
    trainer = SafeDistillTrainer(make_tiny_model(len(tiny_tokenizer)), args, train_dataset=Dataset.from_list(rows),
                                 processing_class=tiny_tokenizer)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:
        assert entry["loss_rationale"] > 0 and entry["loss_answer"] > 0
        # the logged step loss is CasCoD's mix of the two (alpha 0.1), up to the logging's rounding
        assert entry["loss"] == pytest.approx(0.9 * entry["loss_rationale"] + 0.1 * entry["loss_answer"], rel=0.02)


def peaked_model(vocab_size, seed=2):
    """A random tiny model with spread-out entropies (larger embeddings make some predictions confident)."""
    model = make_tiny_model(vocab_size, seed=seed)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(40)
    return model


def manual_entropy_nll(model, dataset):
    nll_all, ent_all, seg_all = [], [], []
    with torch.no_grad():
        for example in dataset:
            ids = torch.tensor([example["input_ids"]])
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            targets = ids[0, 1:]
            segments = torch.tensor(example["segment_ids"][1:])
            keep = segments != Segment.PROMPT
            nll_all.append(-log_probs[torch.arange(len(targets)), targets][keep])
            ent_all.append(-(log_probs.exp() * log_probs).sum(-1)[keep])
            seg_all.append(segments[keep])
    return torch.cat(nll_all), torch.cat(ent_all), torch.cat(seg_all)


def between_values(entropy):
    """A threshold halfway between two neighbouring entropies near the median: no token sits on it."""
    ordered = entropy.sort().values
    middle = len(ordered) // 2
    return (ordered[middle - 1].item() + ordered[middle].item()) / 2


def test_threshold_masking_loss_is_mean_over_kept_tokens(tmp_path, tiny_tokenizer):
    dataset = tokenize_records(RECORDS[:4], tiny_tokenizer, "standard")
    model = peaked_model(len(tiny_tokenizer))
    nll, entropy, segments = manual_entropy_nll(model, dataset)
    threshold = between_values(entropy)
    args = config(tmp_path, entropy_mask_mode="threshold", entropy_mask_threshold=threshold,
                  entropy_mask_protect_answer=True, entropy_mask_min_keep=0)
    trainer = SafeDistillTrainer(model, args, train_dataset=dataset, processing_class=tiny_tokenizer)
    keep = (entropy >= threshold) | (segments == Segment.ANSWER)
    expected = nll[keep].mean().item()
    assert trainer_loss(trainer, dataset) == pytest.approx(expected, rel=1e-4)
    assert abs(expected - nll.mean().item()) > 1e-3  # masking changed the loss


def test_gradient_accumulation_invariance_with_threshold_masking(tmp_path, tiny_tokenizer):
    """The kept-token count of the whole window normalises every micro-batch (pre-pass), so 2x2 == 4x1."""
    dataset = tokenize_records(RECORDS[:4], tiny_tokenizer, "cascade").select(range(4))
    base = peaked_model(len(tiny_tokenizer), seed=3)
    _, entropy, _ = manual_entropy_nll(base, dataset)
    threshold = between_values(entropy)
    results = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        model = copy.deepcopy(base)
        args = config(tmp_path / f"m{batch_size}", distill_format="cascade", per_device_train_batch_size=batch_size,
                      gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=1.0, max_grad_norm=0.0,
                      lr_scheduler_type="constant", entropy_mask_mode="threshold",
                      entropy_mask_threshold=threshold, entropy_mask_min_keep=0)
        trainer = SafeDistillTrainer(model, args, train_dataset=dataset, processing_class=tiny_tokenizer)
        trainer.train()
        assert 0 < trainer.state.log_history[0]["entropy_mask/masked_fraction"] < 1
        results.append(dict(trainer.model.named_parameters()))
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, rtol=1e-4, atol=1e-6)
