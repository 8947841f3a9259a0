"""The ``compressed`` (TokenSkip) format through SafeDistillConfig, SafeDistillTrainer and ``trl-safedistill train``."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from datasets import Dataset

from trl_safedistill.config import SafeDistillConfig
from trl_safedistill.formats import Segment
from trl_safedistill.formats.compressed import DEFAULT_RATIOS, choose_ratio, ratio_key
from trl_safedistill.trainer import SafeDistillTrainer

from .conftest import make_tiny_model

RATIOS = (0.5, 0.7, 1.0)
SEED = 3


def config(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-2, max_steps=1,
        report_to=[], use_cpu=True, gradient_checkpointing=False, logging_steps=1, save_strategy="no",
        shuffle_dataset=False, dataloader_drop_last=False, seed=SEED, distill_format="compressed",
        compression_ratios=list(RATIOS),
    )
    defaults.update(kwargs)
    return SafeDistillConfig(**defaults)


def rows(n=8):
    """Records whose compressed texts are unlike each other and unlike the rationale, at every ratio below 1."""
    return [
        {
            "id": f"c{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i),
            "rationale": f"We add {i} to itself step by step, which gives {2 * i} in total.",
            "compressed": {"0.5": f"half {i} sum {2 * i}", "0.7": f"seventy {i} plus {i} gives {2 * i}"},
        }
        for i in range(n)
    ]


def segment_text(tokenizer, example, segment):
    return tokenizer.decode([t for t, s in zip(example["input_ids"], example["segment_ids"]) if s == segment])


def label_text(tokenizer, example, segment):
    """The decoded *labels* of one segment (what the loss trains on)."""
    return tokenizer.decode([label for label, s in zip(example["labels"], example["segment_ids"]) if s == segment])


def test_config_accepts_compressed_with_tokenskips_ratios_by_default(tmp_path):
    args = SafeDistillConfig(output_dir=str(tmp_path), distill_format="compressed", use_cpu=True, report_to=[])
    assert args.compression_ratios == list(DEFAULT_RATIOS) == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert not args.uses_mixed_loss
    fmt = SafeDistillTrainer.distill_format(config(tmp_path))
    assert fmt.name == "compressed" and fmt.ratios == RATIOS and fmt.seed == SEED


@pytest.mark.parametrize("ratios", [[], [0.0], [1.5], [0.5, -0.1], ["half"], [float("nan")]])
def test_invalid_compression_ratios_raise(tmp_path, ratios):
    with pytest.raises(ValueError, match=r"compression_ratios must be a non-empty list of numbers in \(0, 1\]"):
        config(tmp_path, compression_ratios=ratios)


def test_invalid_compression_ratios_raise_from_the_command_line():
    from trl_safedistill.train import make_parser

    with pytest.raises(ValueError, match="compression_ratios"):
        make_parser().parse_args_and_config(args=["--output_dir", "x", "--distill_format", "compressed",
                                                  "--compression_ratios", "0.5", "2", "--bf16", "false"])


def test_trainer_targets_the_text_compressed_at_the_drawn_ratio_and_trains(tmp_path, tiny_tokenizer):
    data = rows()
    drawn = {row["id"]: choose_ratio(row["id"], RATIOS, SEED) for row in data}
    assert set(drawn.values()) == set(RATIOS)  # every ratio is exercised, 1 (the original rationale) included
    assert any(choose_ratio(i, RATIOS, 0) != g for i, g in drawn.items())  # so the configured seed matters
    trainer = SafeDistillTrainer(make_tiny_model(len(tiny_tokenizer)), config(tmp_path), train_dataset=Dataset.from_list(data),
                                 processing_class=tiny_tokenizer)
    dataset = trainer.train_dataset
    assert dataset["record_id"] == [row["id"] for row in data]
    for row, example in zip(data, dataset):
        g = drawn[row["id"]]
        expected = row["rationale"] if g == 1.0 else row["compressed"][ratio_key(g)]
        assert label_text(tiny_tokenizer, example, Segment.RATIONALE).strip() == expected, row["id"]
        assert label_text(tiny_tokenizer, example, Segment.ANSWER).startswith(f"\nTherefore, the answer is {row['answer']}.")
        prompt = segment_text(tiny_tokenizer, example, Segment.PROMPT)
        assert f"Compression ratio: {ratio_key(g)}" in prompt and row["question"] in prompt
        assert all(label == -100 for label, s in zip(example["labels"], example["segment_ids"]) if s == Segment.PROMPT)
    result = trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(result.training_loss) and result.training_loss > 0


@pytest.mark.parametrize("layout", ["ratio_missing_in_the_row", "no_compressed_column"])
def test_a_record_without_its_drawn_ratio_raises_naming_it(tmp_path, tiny_tokenizer, layout):
    data = rows()
    victim = next(row for row in data if choose_ratio(row["id"], RATIOS, SEED) == 0.5)
    if layout == "ratio_missing_in_the_row":
        del victim["compressed"]["0.5"]  # other rows still have 0.5: the column holds it, null for this row
    else:
        data = [{k: v for k, v in row.items() if k != "compressed"} for row in data]
        victim = next(row for row in data if choose_ratio(row["id"], RATIOS, SEED) < 1)
    g = ratio_key(choose_ratio(victim["id"], RATIOS, SEED))
    with pytest.raises(ValueError, match=f"record '{victim['id']}' has no rationale compressed at ratio {g}"):
        SafeDistillTrainer(make_tiny_model(len(tiny_tokenizer)), config(tmp_path), train_dataset=Dataset.from_list(data),
                           processing_class=tiny_tokenizer)


def test_a_malformed_compressed_column_names_row_and_field(tmp_path, tiny_tokenizer):
    data = [{k: v for k, v in row.items() if k != "compressed"} | {"compressed": "half"} for row in rows(2)]
    with pytest.raises(ValueError, match="train dataset:1: field 'compressed'"):
        SafeDistillTrainer(make_tiny_model(len(tiny_tokenizer)), config(tmp_path), train_dataset=Dataset.from_list(data),
                           processing_class=tiny_tokenizer)


def test_train_command_keeps_the_compress_output_column(tmp_path, tiny_model_dir, tiny_tokenizer, monkeypatch):
    """`trl-safedistill compress` output -> `trl-safedistill train --distill_format compressed`: targets are its texts."""
    import trl_safedistill.trainer as trainer_module
    from trl_safedistill.data.compress import main as compress_main
    from trl_safedistill.train import main as train_main

    source = tmp_path / "records.jsonl"
    source.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "compressed"}) + "\n" for row in rows()))
    out = tmp_path / "compressed.jsonl"
    assert compress_main(["--input", str(source), "--out", str(out), "--model", str(tiny_model_dir), "--ratios", "0.5,0.7",
                          "--no-progress"]) == 0
    written = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}

    tokenized = []
    real = trainer_module.tokenize_records

    def spy(*args, **kwargs):
        tokenized.append(real(*args, **kwargs))
        return tokenized[-1]

    monkeypatch.setattr(trainer_module, "tokenize_records", spy)
    flags = [
        "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(out), "--distill_format", "compressed",
        "--compression_ratios", "0.5", "0.7", "1", "--seed", str(SEED), "--output_dir", str(tmp_path / "run"),
        "--max_steps", "1", "--per_device_train_batch_size", "4", "--use_cpu", "true", "--bf16", "false",
        "--report_to", "none", "--save_strategy", "no", "--gradient_checkpointing", "false", "--max_length", "256",
    ]
    assert train_main(flags) == 0
    (dataset,) = tokenized
    drawn = Counter()
    for example in dataset:
        row = written[example["record_id"]]
        g = choose_ratio(row["id"], RATIOS, SEED)
        drawn[g] += 1
        expected = row["rationale"] if g == 1.0 else row["compressed"][ratio_key(g)]
        assert g == 1.0 or expected != row["rationale"]  # the compressed text really differs from the original
        assert label_text(tiny_tokenizer, example, Segment.RATIONALE).strip() == expected, row["id"]
    assert sorted(drawn) == list(RATIOS) and sum(drawn.values()) == len(written)
    assert "TokenSkip, ratios 0.5, 0.7, 1" in (tmp_path / "run" / "README.md").read_text()

    # a ratio the compress output lacks stops the run, naming the record
    with pytest.raises(ValueError, match=r"record '.+' has no rationale compressed at ratio 0.6"):
        train_main([*flags[:6], "--compression_ratios", "0.6", *flags[10:]])
