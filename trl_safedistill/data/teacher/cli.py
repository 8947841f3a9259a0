"""``trl-safedistill teach``: rationales from an OpenAI-compatible teacher, filtered, resumable.

Example (a local ``transformers serve`` teacher)::

    trl-safedistill teach --questions synthetic:all:20 --out rationales.jsonl \\
        --base-url http://127.0.0.1:8000/v1 --model my-teacher --concurrency 8 --n 4 --keep first

Base URL, model and key also come from ``OPENAI_BASE_URL``, ``OPENAI_MODEL`` and ``OPENAI_API_KEY``;
with no model given, a server that serves exactly one model is asked for its name. The console shows
a progress bar and the per-task summary (never generated text). Exit codes: 0 every question done;
1 some requests failed, or the run stopped because the server is unreachable or keeps failing (run
the same command again to resume); 2 bad input; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable

from ...answers import DEFAULT_ANSWER_PHRASE
from ...records import RecordError
from ..questions import load_questions
from .prompts import load_fewshot
from .run import TeacherConfig, TeacherStopped, format_summary, run_teacher


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-safedistill teach", description=__doc__.split("\n")[0])
    parser.add_argument("--questions", required=True, help="JSONL/JSON file, hub:NAME[:CONFIG[:SPLIT]], bigbench:TASK or synthetic:FAMILY[:N[:SEED]]")
    parser.add_argument("--out", required=True, help="output records JSONL (resumed when it exists)")
    parser.add_argument("--fewshot", default="synthetic", help="exemplars: none, synthetic, bbh-cot or a records JSONL")
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--task", action="append", help="keep only this task (repeatable)")
    parser.add_argument("--limit", type=int, help="first N questions only")
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"))
    parser.add_argument("--model", default=os.environ.get("OPENAI_MODEL"))
    parser.add_argument("--api-key", default=None, help="default: $OPENAI_API_KEY")
    parser.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    parser.add_argument("--answer-phrase", default=DEFAULT_ANSWER_PHRASE)
    parser.add_argument("--n", type=int, default=1, help="samples per question")
    parser.add_argument("--keep", choices=("first", "all"), default="first", help="keep the first correct sample or all")
    parser.add_argument("--temperature", type=float, help="default 0 with --n 1, else 0.7")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="sample k is requested with seed + k")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request attempt")
    parser.add_argument(
        "--retries", type=int, default=5,
        help="retries per request on timeouts, connection errors, 408/409/429 and 5xx (the openai SDK's: "
        "after the server's Retry-After, else 0.5 s doubling to 8 s)",
    )
    parser.add_argument(
        "--max-consecutive-failures", type=int, default=5, metavar="N",
        help="stop (exit 1, output kept and resumable) after N requests in a row failed after their retries; 0: never",
    )
    parser.add_argument("--no-retry-failed", action="store_true", help="on resume, do not retry failed attempts")
    parser.add_argument("--restart", action="store_true", help="discard existing output instead of resuming")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        config = TeacherConfig(
            base_url=args.base_url,
            model=args.model,
            api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
            endpoint=args.endpoint,
            answer_phrase=args.answer_phrase,
            shots=args.shots,
            n=args.n,
            keep=args.keep,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            seed=args.seed,
            concurrency=args.concurrency,
            timeout=args.timeout,
            retries=args.retries,
            max_consecutive_failures=args.max_consecutive_failures,
            retry_failed=not args.no_retry_failed,
            progress=not args.no_progress,
        )
        questions = load_questions(args.questions, limit=args.limit, tasks=args.task)
        fewshot = load_fewshot(args.fewshot)
    except (RecordError, ValueError) as error:
        print(f"trl-safedistill teach: {error}", file=sys.stderr)
        return 2
    try:
        result = run_teacher(questions, args.out, config, fewshot, resume=not args.restart)
    except TeacherStopped as error:
        print(f"trl-safedistill teach: {error}", file=sys.stderr)
        return 1
    except (RecordError, ValueError) as error:  # e.g. an output file that is not a teach output, no single model
        print(f"trl-safedistill teach: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(format_summary(result.summary), file=sys.stderr)
    totals = result.totals
    print(f"{totals['kept']} records in {args.out} ({result.requests} requests this run)", file=sys.stderr)
    for reason, count in result.errors.most_common(3):
        print(f"  failed x{count}: {reason}", file=sys.stderr)
    return 0 if totals["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
