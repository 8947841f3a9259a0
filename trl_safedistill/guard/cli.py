"""``trl-safedistill guard augment|distill|eval`` (HarmAug, arXiv 2410.01524).

Examples (offline, with the embedded default as generator, responder and stand-in teacher)::

    trl-safedistill guard augment --output data/harmaug.jsonl --num-records 200 \\
        --generator embedded-default --teacher embedded-default --exemplars goals.txt
    trl-safedistill guard distill --data data/harmaug.jsonl --output-dir out/guard --student minilm-embedded
    trl-safedistill guard eval --judge distilled:out/guard --data labelled.jsonl --output-dir out/guard-eval

``augment`` prints counts only; generated text goes to the ``--output`` file alone (mode 0600).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trl_safedistill.guard.llama_guard import DEFAULT_LLAMA_GUARD


def _augment_parser(sub: Any) -> None:
    p = sub.add_parser("augment", help="generate (prompt, response, P(unsafe)) records, resumable")
    p.add_argument("--output", required=True, help="JSONL to create or resume (created with mode 0600)")
    p.add_argument("--num-records", type=int, default=100)
    p.add_argument("--generator", default="embedded-default", help="hub id, folder, or the endpoint's model name")
    p.add_argument("--generator-endpoint", default=None, help="OpenAI-compatible base URL (uses /v1/completions)")
    p.add_argument("--generator-tokenizer", default=None, help="tokenizer whose chat template renders requests")
    p.add_argument("--responder", default=None, help="defaults to the generator")
    p.add_argument("--responder-endpoint", default=None)
    p.add_argument("--responder-tokenizer", default=None)
    p.add_argument("--teacher", default=DEFAULT_LLAMA_GUARD, help="guard in Llama Guard 3 format (embedded-default offline)")
    p.add_argument("--teacher-batch-size", type=int, default=8)
    p.add_argument("--exemplars", default=None, help=".txt/.json/.jsonl of harmful instructions")
    p.add_argument("--exemplar-source", default="advbench", help="without --exemplars: advbench, harmbench or both")
    p.add_argument("--shots", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refusal-rate", type=float, default=0.5)
    p.add_argument("--no-response-prefill", action="store_true", help="let the responder answer without an opener")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generator tokens per instruction")
    p.add_argument("--response-max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-attempt-factor", type=float, default=4.0, help="give up after this many attempts per record")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY")


def _distill_parser(sub: Any) -> None:
    p = sub.add_parser("distill", help="train a sequence-pair student on augmented data")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--student", default="auto", help="auto | deberta-v3-large | minilm-embedded | hub id | folder")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--learning-rate", type=float, default=3e-5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-file", action="append", default=[], help="labelled JSONL to evaluate on (repeatable)")
    p.add_argument("--label-threshold", type=float, default=0.5,
                   help="hard label = P(unsafe) > this (paper 0.5; change only for an uncalibrated stand-in teacher)")


def _eval_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="F1 / AUPRC / PR curve of a judge on labelled JSONL files")
    p.add_argument("--judge", required=True, help="llama-guard[:<path-or-hub-id>] or distilled:<path>")
    p.add_argument("--data", action="append", required=True, help="labelled JSONL (label or p_unsafe); repeatable")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threshold", type=float, default=0.5)


def _text_generator(name: str, endpoint: str | None, args: argparse.Namespace, max_new_tokens: int):
    import os

    from trl_safedistill.guard.backends import CompletionsEndpoint, LocalGenerator

    options = {"max_new_tokens": max_new_tokens, "temperature": args.temperature, "top_p": args.top_p}
    if endpoint:
        return CompletionsEndpoint(endpoint, name, api_key=os.environ.get(args.api_key_env), **options)
    return LocalGenerator.from_pretrained(name, **options)


def _tokenizer_for(generator: Any, name: str, explicit: str | None):
    from trl_safedistill.models import load_tokenizer

    if explicit:
        return load_tokenizer(explicit)
    return getattr(generator, "tokenizer", None) or load_tokenizer(name)


def augment_command(args: argparse.Namespace) -> int:
    from trl_safedistill.guard.augment import AugmentConfig, load_exemplars, run_augmentation
    from trl_safedistill.guard.llama_guard import LlamaGuardScorer

    exemplars = load_exemplars(args.exemplars, args.exemplar_source)
    generator = _text_generator(args.generator, args.generator_endpoint, args, args.max_new_tokens)
    generator_tokenizer = _tokenizer_for(generator, args.generator, args.generator_tokenizer)
    responder_name = args.responder or args.generator
    same = responder_name == args.generator and args.responder_endpoint == args.generator_endpoint
    if same and not args.generator_endpoint:
        from trl_safedistill.guard.backends import LocalGenerator

        responder = LocalGenerator(generator.model, generator.tokenizer, max_new_tokens=args.response_max_new_tokens,
                                   temperature=args.temperature, top_p=args.top_p)
    else:
        responder = _text_generator(responder_name, args.responder_endpoint, args, args.response_max_new_tokens)
    responder_tokenizer = _tokenizer_for(responder, responder_name, args.responder_tokenizer)
    scorer = LlamaGuardScorer.from_pretrained(args.teacher, batch_size=args.teacher_batch_size)
    config = AugmentConfig(
        output=args.output,
        num_records=args.num_records,
        exemplars=exemplars,
        batch_size=args.batch_size,
        shots=args.shots,
        seed=args.seed,
        refusal_rate=args.refusal_rate,
        prefill_responses=not args.no_response_prefill,
        max_attempt_factor=args.max_attempt_factor,
        provenance={
            "generator": args.generator_endpoint and f"{args.generator}@{args.generator_endpoint}" or args.generator,
            "responder": args.responder_endpoint and f"{responder_name}@{args.responder_endpoint}" or responder_name,
            "teacher": args.teacher,
            "exemplars": args.exemplars or args.exemplar_source,
        },
    )
    counts = run_augmentation(
        config,
        generator=generator,
        generator_tokenizer=generator_tokenizer,
        responder=responder,
        responder_tokenizer=responder_tokenizer,
        scorer=scorer,
    )
    print(json.dumps(counts))
    return 0 if counts["records"] >= args.num_records else 1


def distill_command(args: argparse.Namespace) -> int:
    from trl_safedistill.guard.distill import DistillConfig, distill_guard

    config = DistillConfig(
        data=args.data,
        output_dir=args.output_dir,
        student=args.student,
        max_length=args.max_length,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        max_steps=args.max_steps,
        eval_files=args.eval_file,
        label_threshold=args.label_threshold,
    )
    metrics = distill_guard(config)
    print(json.dumps(metrics, indent=2))
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from trl_safedistill.guard.distill import load_guard_rows
    from trl_safedistill.guard.judge import load_judge
    from trl_safedistill.guard.metrics import guard_metrics, plot_pr_curves

    judge = load_judge(args.judge, batch_size=args.batch_size)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"judge": judge.name}
    curves = {}
    for path in args.data:
        rows = load_guard_rows(path)
        labels = [row["label"] for row in rows]
        scores = judge.score([(row["prompt"], row["response"]) for row in rows])
        metrics[Path(path).name] = guard_metrics(labels, scores, args.threshold)
        curves[Path(path).name] = (labels, scores)
    plot_pr_curves(curves, output / "pr_curve.png")
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    return 0


def guard_main(argv: list[str] | None = None) -> int:
    """Entry point of ``trl-safedistill guard``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="trl-safedistill guard", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _augment_parser(sub)
    _distill_parser(sub)
    _eval_parser(sub)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    handlers = {"augment": augment_command, "distill": distill_command, "eval": eval_command}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(guard_main())
