"""Teacher generation throughput, concurrent vs sequential, and compression scoring speed, in one run.

Starts ``transformers serve`` on the embedded default (127.0.0.1, free port; continuous batching on
unless ``--no-continuous-batching``), sends the same questions once with one request in flight and
once with ``--concurrency`` in flight through ``trl-safedistill teach``'s own client, and prints the
requests/s of each and their ratio. The server is always stopped. Then it scores rationales with the
self-information scorer (the embedded default as the student) and prints tokens scored per second.

    .venv/bin/python benchmarks/teacher_throughput.py --requests 8 --concurrency 8 --max-tokens 16

The issue's goal is a ratio of at least 3x with continuous batching on the server side; on a shared
CPU the ratio is bounded by the cores the server gets, so read it next to the machine's load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def measure(base_url: str, model: str, questions, concurrency: int, max_tokens: int, out: Path) -> float:
    """Requests per second for one teach run over ``questions`` (fresh output, no resumption)."""
    from trl_safedistill.data.openai_client import ClientConfig, TeacherClient
    from trl_safedistill.data.teacher.run import TeacherConfig, run_teacher

    config = TeacherConfig(base_url=base_url, model=model, max_tokens=max_tokens, concurrency=concurrency,
                           shots=0, timeout=600, retries=1, progress=False)
    client = TeacherClient(ClientConfig(base_url, model, timeout=600, retries=1))
    began = time.perf_counter()
    result = run_teacher(questions, out, config, client=client, resume=False)
    seconds = time.perf_counter() - began
    if result.totals["failed"]:
        raise RuntimeError(f"{result.totals['failed']} requests failed: {dict(result.errors)}")
    return result.requests / seconds


def compression_speed(records: int, batch_size: int) -> tuple[int, float]:
    """Tokens scored per second by the self-information scorer on the embedded default."""
    from trl_safedistill.data.compress import SelfInformationScorer
    from trl_safedistill.data.synthetic import generate_split

    scorer = SelfInformationScorer("embedded-default", batch_size=batch_size)
    rationales = generate_split("all", max(1, records // 5), seed=11)[:records]
    scorer.score(rationales[:1])  # warm-up
    began = time.perf_counter()
    scores = scorer.score(rationales)
    seconds = time.perf_counter() - began
    tokens = sum(len(s) for s in scores)
    return tokens, tokens / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=8, help="questions per run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--no-continuous-batching", action="store_true")
    parser.add_argument("--compress-records", type=int, default=16)
    parser.add_argument("--compress-batch-size", type=int, default=8)
    parser.add_argument("--skip-compression", action="store_true")
    parser.add_argument("--server-threads", type=int, help="OMP_NUM_THREADS of the server (default: inherited)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from trl_safedistill.data.local_server import local_teacher
    from trl_safedistill.data.questions import load_questions
    from trl_safedistill.models import embedded_default_path

    model = embedded_default_path()
    questions = load_questions(f"synthetic:multistep_arithmetic:{args.requests}:21")
    extra = [] if args.no_continuous_batching else ["--continuous-batching"]
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as tmp, local_teacher(
        model, extra_args=extra, log_path=Path(tmp) / "serve.log", threads=args.server_threads
    ) as url:
        measure(url, str(model), questions[:1], 1, args.max_tokens, Path(tmp) / "warmup.jsonl")  # first request loads
        sequential = measure(url, str(model), questions, 1, args.max_tokens, Path(tmp) / "seq.jsonl")
        concurrent = measure(url, str(model), questions, args.concurrency, args.max_tokens, Path(tmp) / "conc.jsonl")
    mode = "off" if args.no_continuous_batching else "on"
    threads = args.server_threads or "inherited"
    print(f"teacher: {args.requests} requests x {args.max_tokens} max tokens, continuous batching {mode}, server threads {threads}")
    print(f"  sequential (1 in flight):        {sequential:.3f} requests/s")
    print(f"  concurrent ({args.concurrency} in flight):        {concurrent:.3f} requests/s")
    print(f"  ratio concurrent / sequential:   {concurrent / sequential:.2f}x")
    if not args.skip_compression:
        tokens, speed = compression_speed(args.compress_records, args.compress_batch_size)
        print(f"compression: self-information on the embedded default, {tokens} tokens scored at {speed:.0f} tokens/s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
