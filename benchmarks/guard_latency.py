"""Student vs teacher guard on the same (prompt, response) pairs: latency per pair and peak memory.

HarmAug (arXiv 2410.01524) reports the distilled DeBERTa at under 25% of Llama-Guard-3-8B's cost
(peak memory about 3.4 GB vs 28.8 GB); the project's goal is student latency <= 0.1x the teacher's.

Each guard runs in its own fresh subprocess (same pairs, same batch size, same thread count), so its
memory is measured alone:

* latency per pair = wall time of ``judge.score(pairs)`` / ``len(pairs)``, after one warm-up batch;
* CPU peak memory = the process's peak resident set size (``ru_maxrss``) minus its resident size
  after the imports and before loading the guard (``VmRSS``): the memory the guard costs. The
  absolute peaks are printed too. ``tracemalloc`` is not used: it sees only Python-heap allocations,
  not the tensors torch allocates in C++, so it would report almost nothing for either model;
* on a GPU, ``torch.cuda.max_memory_allocated()`` as well.

Usage (CPU, offline: the embedded default SmolLM2-135M read in Llama Guard 3 format as the teacher,
the all-MiniLM-L6-v2 student from the wheel, or a folder written by ``guard distill``)::

    python benchmarks/guard_latency.py
    python benchmarks/guard_latency.py --student out/guard --teacher meta-llama/Llama-Guard-3-8B --pairs 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

QUESTIONS = [
    "How do I bake sourdough bread at home?",
    "What is the capital of Australia, and why was it chosen?",
    "Can you explain how vaccines train the immune system?",
    "Write a short poem about autumn leaves.",
    "How can I improve my sleep schedule?",
    "What are good strategies for learning a new language?",
    "Summarise the causes of the French Revolution.",
    "How do I change a flat tyre on a bicycle?",
]
ANSWERS = [
    "Sure, here is a simple approach: start with a mature starter, mix flour and water, rest, fold, shape and "
    "bake in a hot covered pot for about forty minutes.",
    "I'm sorry, but I can't help with that request.",
    "Canberra. It was chosen as a compromise between Sydney and Melbourne, and purpose-built as the capital.",
    "Golden leaves drift down, whispering of frost and the long sleep of the year.",
    "Keep a fixed wake-up time, limit screens before bed, avoid caffeine late in the day, and get morning light.",
]


def make_pairs(n: int) -> list[tuple[str, str]]:
    """``n`` benign pairs of varied length (the benchmark needs no harmful text)."""
    return [(QUESTIONS[i % len(QUESTIONS)], " ".join([ANSWERS[i % len(ANSWERS)]] * (1 + i % 3))) for i in range(n)]


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    """Load one guard, score the pairs, print one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    # Import everything either guard needs before the baseline, so the increment is the guard's own memory.
    import transformers.models.bert.modeling_bert  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    import trl_safedistill.guard.distill  # noqa: F401
    from trl_safedistill.guard.judge import DistilledGuardJudge, load_judge

    device = args.device
    baseline = _rss_mb()
    start = time.perf_counter()
    if args.role == "teacher":
        judge = load_judge(f"llama-guard:{args.teacher}", batch_size=args.batch_size, device=device)
    elif args.student in {"minilm-embedded", "minilm"}:
        from trl_safedistill.guard.distill import load_student, minilm_embedded_path

        model, tokenizer = load_student(str(minilm_embedded_path()))
        judge = DistilledGuardJudge(model.to(device), tokenizer, "minilm-embedded (untrained head)", args.batch_size)
    else:
        judge = load_judge(f"distilled:{args.student}", batch_size=args.batch_size, device=device)
    load_s = time.perf_counter() - start
    pairs = make_pairs(args.pairs)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    judge.score(pairs[: args.batch_size])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    scores = judge.score(pairs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "role": args.role,
        "name": judge.name,
        "pairs": len(pairs),
        "load_s": load_s,
        "latency_per_pair_ms": 1000 * elapsed / len(pairs),
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak,
        "guard_rss_mb": peak - baseline,
        "mean_score": sum(scores) / len(scores),
    }
    if device.startswith("cuda"):
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="embedded-default", help="causal LM read in Llama Guard 3 format")
    parser.add_argument("--student", default="minilm-embedded", help="folder from `guard distill`, or minilm-embedded")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--role", choices=["teacher", "student"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.role:
        worker(args)
        return 0
    results = {}
    for role in ("teacher", "student"):
        command = [sys.executable, __file__, "--role", role, "--teacher", args.teacher, "--student", args.student,
                   "--pairs", str(args.pairs), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                   "--device", args.device]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        results[role] = json.loads(lines[-1][len("RESULT "):])
    teacher, student = results["teacher"], results["student"]
    ratios = {
        "latency_per_pair": student["latency_per_pair_ms"] / teacher["latency_per_pair_ms"],
        "peak_memory_guard_rss": student["guard_rss_mb"] / teacher["guard_rss_mb"],
        "peak_memory_process_rss": student["peak_rss_mb"] / teacher["peak_rss_mb"],
    }
    if "cuda_peak_mb" in teacher:
        ratios["peak_memory_cuda"] = student["cuda_peak_mb"] / teacher["cuda_peak_mb"]
    print(f"device {args.device}, {args.threads} threads, {args.pairs} pairs, batch {args.batch_size}")
    for role, r in results.items():
        extra = f", cuda peak {r['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in r else ""
        print(f"{role:8} {r['name']}: {r['latency_per_pair_ms']:.2f} ms/pair, guard RSS +{r['guard_rss_mb']:.0f} MB "
              f"(process peak {r['peak_rss_mb']:.0f} MB){extra}, load {r['load_s']:.1f} s")
    print(f"student/teacher latency per pair: {ratios['latency_per_pair']:.3f}x")
    print(f"student/teacher peak memory (guard RSS increment): {ratios['peak_memory_guard_rss']:.3f}x; "
          f"(whole-process peak RSS): {ratios['peak_memory_process_rss']:.3f}x")
    if "peak_memory_cuda" in ratios:
        print(f"student/teacher CUDA peak memory: {ratios['peak_memory_cuda']:.3f}x")
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump({"results": results, "ratios": ratios}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
