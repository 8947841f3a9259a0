"""Adaptive thinking's token saving: one adaptive student, three inference policies, the same test items.

One run: distil an ``adaptive`` student (records labelled by the starting student, both modes learnt after their
tag, then the soft-prompt router trained on the distilled student), then generate for the same held-out bbh-cot
items through the one evaluation path (:func:`trl_safedistill.evaluation.scoring.routed_generate`) three ways:

* ``adaptive``: the router picks each item's mode (answer-first items stop right after the answer);
* ``standard``: every item think-first (rationale, then answer), the always-rationale-first baseline;
* ``answer_first``: every item answer-first, stopping at the marker (the early-stop baseline).

The baselines are the same student forced into one mode, so the comparison isolates the routing. Printed: the
router's mode mix; per policy, mean generated tokens per question (bootstrap 95% CI) and accuracy (the answer
extracted from the text, ``score_generation``; Wilson 95% CI); each policy against ``standard``: the ratio of mean
tokens with a paired percentile bootstrap CI (items resampled with both policies' tokens together) and the accuracy
difference with its paired bootstrap CI and McNemar's exact p. The numbers come from
:func:`trl_safedistill.evaluation.adaptive.compare_policies`, the function the evidence report's "Adaptive thinking"
section calls on the demo's and the evidence run's adaptive units (``--methods ...,adaptive``). Goals (issue 19):
adaptive tokens <= 0.6x standard at accuracy not significantly below it; answer-first <= 0.3x standard.
No generated text is printed; ``--output-dir`` keeps the numbers (``adaptive_tokens.json``) and the student.

    python benchmarks/adaptive_tokens.py                              # embedded default, CPU, a few minutes
    python benchmarks/adaptive_tokens.py --train-records 400 --steps 200 --test-items 200   # a real measurement
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def evenly(items: list, count: int) -> list:
    """``count`` items spread evenly over ``items`` (every task of bbh-cot represented, no randomness)."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded-default", choices=["embedded-default", "tiny"],
                        help="tiny: a random 2-layer Llama with the embedded tokenizer (a smoke run of the pipeline)")
    parser.add_argument("--train-records", type=int, default=48)
    parser.add_argument("--test-items", type=int, default=24)
    parser.add_argument("--steps", type=int, default=30, help="distillation steps")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--router-steps", type=int, default=60)
    parser.add_argument("--label-rule", default="answer_correct", choices=["answer_correct", "answer_loss"])
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch", type=int, default=8, help="questions per generate call")
    parser.add_argument("--output-dir", default="/tmp/adaptive-tokens")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging

    from trl_safedistill import SafeDistillConfig, SafeDistillTrainer
    from trl_safedistill.answers import score_generation
    from trl_safedistill.data.bbh_cot import load_bbh_cot
    from trl_safedistill.evaluation.adaptive import POLICIES, compare_policies, forced_mode, opens_with_answer
    from trl_safedistill.evaluation.scoring import routed_generate
    from trl_safedistill.formats import end_of_turn_text, is_chat_tokenizer
    from trl_safedistill.models import embedded_default_path, load_tokenizer

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    started = time.time()
    model_path = str(embedded_default_path())
    tokenizer = load_tokenizer(model_path)
    train = evenly(load_bbh_cot("train"), args.train_records)
    test = evenly(load_bbh_cot("heldout"), args.test_items)
    output = Path(args.output_dir)
    config = SafeDistillConfig(
        str(output / "student"), distill_format="adaptive", router_label_rule=args.label_rule,
        router_steps=args.router_steps, max_steps=args.steps, learning_rate=args.learning_rate,
        lr_scheduler_type="constant_with_warmup", warmup_steps=2, per_device_train_batch_size=4, max_length=384,
        overlong="skip", use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no",
        logging_steps=max(1, args.steps), disable_tqdm=True, seed=args.seed, dataset_num_proc=1,
    )
    if args.model == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(args.seed)
        student = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                               tie_word_embeddings=True))
    else:
        student = model_path
    trainer = SafeDistillTrainer(student, config, train_dataset=Dataset.from_list([r.to_dict() for r in train]),
                                 processing_class=tokenizer,
                                 peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    trainer.remove_callback(PrinterCallback)  # no log dicts on the console
    labels = list(trainer.router_modes.values())
    trainer.train()
    trainer.save_model(str(output / "student"))
    router_stats = next(e for e in reversed(trainer.state.log_history) if "router/accuracy" in e)
    trained = time.time() - started

    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    fmt = trainer.distill_format(trainer.args)
    chat = is_chat_tokenizer(tokenizer)
    stops = [end_of_turn_text(tokenizer, chat)]
    questions = [(r.question, r.description) for r in test]
    docs = [{"golds": [r.answer], "options": list(r.choices or [])} for r in test]
    runs: dict[str, dict] = {}
    for policy in POLICIES:
        results = []
        for start in range(0, len(questions), args.batch):
            chunk = questions[start : start + args.batch]
            forced = None if forced_mode(policy) is None else [policy] * len(chunk)
            results.extend(routed_generate(model, tokenizer, trainer.router, fmt, chunk, stops, args.max_new_tokens, chat,
                                           stop_early=True, modes=forced))
        runs[policy] = {
            "tokens": [count for _, count, _ in results],
            "correct": [score_generation(doc, text, fmt.answer_phrase) for doc, (text, _, _) in zip(docs, results)],
            "modes": [mode for _, _, mode in results],
            "opened": [opens_with_answer(text, fmt.answer_phrase) for text, _, _ in results],
        }

    summary: dict = {
        "model": ("embedded-default (SmolLM2-135M-Instruct)" if args.model != "tiny" else "tiny random Llama") + ", LoRA r16",
        "train_records": len(train), "test_items": len(test), "steps": args.steps, "label_rule": args.label_rule,
        "label_answer_first": labels.count("answer_first") / max(1, len(labels)),
        "router_train_accuracy": router_stats["router/accuracy"],
        "adaptive_answer_first": runs["adaptive"]["modes"].count("answer_first") / len(test),
        "train_seconds": round(trained), "total_seconds": None, "policies": {}, "against_standard": {},
    }
    compared = compare_policies({p: runs[p]["correct"] for p in POLICIES}, {p: runs[p]["tokens"] for p in POLICIES},
                                runs["adaptive"]["modes"], opened={p: runs[p]["opened"] for p in POLICIES})
    summary["policies"] = compared["policies"]
    summary["against_standard"] = compared["against_reference"]
    summary["mode_followed"] = compared["mode_followed"]
    summary["total_seconds"] = round(time.time() - started)
    output.mkdir(parents=True, exist_ok=True)
    (output / "adaptive_tokens.json").write_text(json.dumps({**summary, "per_item": runs}, indent=2), encoding="utf-8")

    def ci(entry: dict, digits: int = 2) -> str:
        low, high = entry["ci"]
        return f"{entry['value']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    print(f"adaptive thinking, {summary['model']}: {len(train)} training records, {args.steps} steps "
          f"({summary['train_seconds']} s), {len(test)} held-out bbh-cot items, max {args.max_new_tokens} new tokens")
    print(f"labels ({args.label_rule}): {summary['label_answer_first']:.0%} answer-first; router training accuracy "
          f"{summary['router_train_accuracy']:.2f}; router on the test items: {summary['adaptive_answer_first']:.0%} answer-first")
    print(f"{'policy':<14}{'tokens/question [95% CI]':<30}{'accuracy [95% CI]':<26}")
    for policy in POLICIES:
        row = summary["policies"][policy]
        print(f"{policy:<14}{ci(row['tokens'], 1):<30}{ci(row['accuracy']):<26}")
    for policy, row in summary["against_standard"].items():
        test_row = row["accuracy"]
        print(f"{policy} / standard: tokens x{ci(row['token_ratio'])}; accuracy {test_row['diff']:+.2f} "
              f"[{test_row['ci'][0]:+.2f}, {test_row['ci'][1]:+.2f}], McNemar p={test_row['p_value']:.2f} "
              f"(discordant {test_row['a_only']}/{test_row['b_only']})")
    for policy, row in summary["mode_followed"].items():
        if row is not None:
            print(f"{policy}: {row['successes']}/{row['n']} answer-first generations open with the answer phrase")
    print(f"total {summary['total_seconds']} s; numbers in {output / 'adaptive_tokens.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
