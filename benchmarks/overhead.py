"""Overhead of SafeDistillTrainer and its safety methods against plain TRL SFTTrainer, measured side by side in one run.

Every variant trains the same model on the same token sequences (the ``cascade`` rendering of the
shipped bbh-cot rationales) for the same steps; each runs in its own subprocess so that peak memory
is its own. Variants run interleaved (A B C ... A B C ...) ``--repeats`` times; the script prints, per variant, the
median step time and peak memory and the median and range (min-max) of its per-repeat ratios to plain SFTTrainer
(the repeat's own ``sft`` run):

* ``sft``: TRL's SFTTrainer on ``input_ids``/``labels`` (its own loss);
* ``cascade``: SafeDistillTrainer, CasCoD's two-segment loss;
* ``slowed``: cascade + low-entropy masking (fraction 0.5) + slow tuning (project rule, every layer checked at
  every step, a budget of 0.05% of ||W0|| so that projections act within the measured steps; their count is
  printed);
* ``direction``: cascade + slow tuning's ``direction`` rule (the left projection onto each layer's alignment
  subspace, every step, a budget small enough to bind);
* ``safe_lora``: cascade + Safe LoRA (post-hoc: no per-step cost; its one-off cost at the end is printed as
  ``end s``);
* ``asft``: cascade + AsFT's regulariser (its gradient added at every optimizer step).

The alignment methods need unaligned and aligned weights: the parent writes them once, before any variant runs
(``aligned.safetensors``: the model's weights; ``unaligned.safetensors``: minus a rank-8 delta of 0.2% of each
projection's norm), so that no variant pays for them in time or memory.

Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU. On a CPU it is measured two ways: the peak resident set
size (``ru_maxrss``: the whole process, which moves by a few percent from run to run) and, in a second process per
variant and repeat, the peak of the bytes torch's CPU allocator holds ("allocated": the CPU analogue of
``max_memory_allocated``, read from ``torch.profiler``'s memory events from before the model is built to the end of
training; exact and repeatable, so its min-max range shows any run-to-run change). Step times come only from the
unprofiled process. Goals (issues 2/3 and 17): step-time ratio <= 1.05, peak-memory ratio <= 1.02.

    python benchmarks/overhead.py                      # embedded default, LoRA, CPU
    python benchmarks/overhead.py --model tiny         # a random 2-layer Llama (quick)
    python benchmarks/overhead.py --model qwen2.5-1.5b-random --qlora --max-length 1024 --batch 4   # GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("sft", "cascade", "slowed", "direction", "safe_lora", "asft")


def build_model(name: str, qlora: bool):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

    from trl_safedistill.models import load_tokenizer, resolve_model_path

    if name == "tiny":
        tokenizer = load_tokenizer("embedded-default")
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config), tokenizer
    if name == "qwen2.5-1.5b-random":
        # The Qwen2.5-1.5B architecture with random weights, built from its config: no hub download of weights
        config = AutoConfig.for_model("qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                      num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                      max_position_embeddings=32768, tie_word_embeddings=True)
        tokenizer = load_tokenizer("embedded-default")
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        if qlora:
            import tempfile

            folder = tempfile.mkdtemp()
            model.save_pretrained(folder)
            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
            model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, device_map={"": 0})
        return model, tokenizer
    path = resolve_model_path(name)
    return AutoModelForCausalLM.from_pretrained(path), load_tokenizer(path)


def write_alignment_files(options: argparse.Namespace, folder: str) -> None:
    """``aligned.safetensors`` (the model's 2-D weights) and ``unaligned.safetensors`` (minus a rank-8 delta of 0.2% of
    each projection's norm) in ``folder``: the weights the alignment methods read."""
    import os

    import torch
    from safetensors.torch import save_file

    model, _ = build_model(options.model, qlora=False)
    generator = torch.Generator().manual_seed(0)
    aligned, unaligned = {}, {}
    for name, p in model.named_parameters():
        if p.ndim != 2:
            continue
        w = p.detach().float().cpu()
        aligned[name] = w.contiguous()
        if "proj" in name:
            d = torch.randn(w.shape[0], 8, generator=generator) @ torch.randn(8, w.shape[1], generator=generator)
            w = w - d * (0.002 * float(w.norm()) / float(d.norm()))
        unaligned[name] = w.contiguous()
    save_file(aligned, os.path.join(folder, "aligned.safetensors"))
    save_file(unaligned, os.path.join(folder, "unaligned.safetensors"))


def peak_allocated_bytes(memory_events: list[tuple[int, int]]) -> int:
    """The peak of the running sum of ``(time_ns, bytes)`` allocation events (frees negative), taken in time order.

    Fed with ``torch.profiler``'s ``[memory]`` events (``profile_memory=True``), this is the most CPU memory torch
    held at once while the profiler ran (a block allocated before it started reports no free)."""
    held = peak = 0
    for _, nbytes in sorted(memory_events):
        held += nbytes
        peak = max(peak, held)
    return peak


def child(options: argparse.Namespace) -> None:
    """Train one variant and print one JSON line: median step time and peak memory (``--measure allocated``: the
    peak bytes held by torch's CPU allocator, read from the profiler, instead of times and resident memory)."""
    import torch
    from peft import LoraConfig
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from trl_safedistill import SafeDistillConfig, SafeDistillTrainer
    from trl_safedistill.data.bbh_cot import load_bbh_cot
    from trl_safedistill.dataset import tokenize_records

    torch.set_num_threads(options.threads)
    profiler = None
    if options.measure == "allocated":  # every allocation from the model's weights to the end of training
        profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        profiler.start()
    model, tokenizer = build_model(options.model, options.qlora)
    records = load_bbh_cot("train")[: options.batch * (options.steps + 1)]
    dataset = tokenize_records(records, tokenizer, "cascade", max_length=options.max_length, overlong="truncate")  # as measured
    common = dict(output_dir="/tmp/overhead-bench", per_device_train_batch_size=options.batch, max_steps=options.steps,
                  learning_rate=1e-4, report_to=[], save_strategy="no", logging_steps=10**6, seed=0,
                  gradient_checkpointing=options.gradient_checkpointing, max_length=options.max_length,
                  shuffle_dataset=False, use_cpu=not torch.cuda.is_available(),
                  bf16=torch.cuda.is_available(), dataloader_num_workers=0)
    peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")

    times: list[float] = []
    hooks: dict[int, float] = {}  # step (1-based, counted here) -> seconds inside the safety methods' per-step hooks
    clock: dict[str, float] = {}

    def now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    class StepStart(TrainerCallback):  # put first in the handler: the step starts before any other callback's hook
        def on_step_begin(self, args, state, control, **kwargs):
            # the step in progress, counted here: Trainer's global_step is one lower until the optimizer has stepped,
            # so it would file a step's on_pre_optimizer_step (AsFT) under the step before
            clock["step"] = len(times) + 1
            clock["start"] = now()

    class StepEnd(TrainerCallback):  # put last: the step ends after every other on_step_end (slow tuning corrects there)
        def on_step_end(self, args, state, control, **kwargs):
            times.append(now() - clock["start"])

    if options.variant == "sft":
        trainer = SFTTrainer(model, SFTConfig(**common), train_dataset=dataset.select_columns(["input_ids", "labels"]),
                             processing_class=tokenizer, peft_config=peft_config)
    else:
        extra = {}
        aligned = dict(aligned_weights=f"{options.alignment_dir}/aligned.safetensors")
        unaligned = f"{options.alignment_dir}/unaligned.safetensors"
        if options.variant == "slowed":
            # A small budget, so that projections act within the few steps measured (their count is printed).
            extra = dict(entropy_mask_mode="fraction", entropy_mask_quantile=0.5, slow_tuning_rule="project",
                         slow_tuning_budget=0.0005)
        elif options.variant == "direction":
            extra = dict(slow_tuning_rule="direction", slow_tuning_budget=0.001, slow_tuning_reference=unaligned,
                         **aligned)
        elif options.variant == "safe_lora":
            extra = dict(safe_lora=True, safe_lora_reference=unaligned, **aligned)
        elif options.variant == "asft":
            extra = dict(asft=True, asft_reference=unaligned, asft_lambda=1.0, **aligned)
        args = SafeDistillConfig(**common, distill_format="cascade", **extra)
        trainer = SafeDistillTrainer(model, args, train_dataset=dataset.remove_columns(["record_id"]),
                                     processing_class=tokenizer, peft_config=peft_config)
    trainer.callback_handler.callbacks.insert(0, StepStart())
    trainer.callback_handler.callbacks.append(StepEnd())

    def timed_hook(inner):
        def hook(args, state, control, **kwargs):
            start = now()
            inner(args, state, control, **kwargs)
            hooks[clock["step"]] = hooks.get(clock["step"], 0.0) + now() - start

        return hook

    for callback in trainer.callback_handler.callbacks:  # the methods' own per-step hooks, timed where they run
        if not type(callback).__module__.startswith("trl_safedistill.methods"):
            continue
        for event in ("on_step_begin", "on_pre_optimizer_step", "on_optimizer_step", "on_substep_end", "on_step_end"):
            if getattr(type(callback), event) is not getattr(TrainerCallback, event):  # overridden, not a no-op
                setattr(callback, event, timed_hook(getattr(callback, event)))
    end_seconds = 0.0
    for callback in trainer.callback_handler.callbacks:  # Safe LoRA's one-off cost at the end of training
        if type(callback).__name__ == "SafeLoraCallback":
            inner = callback.on_train_end

            def timed(*args, _inner=inner, **kwargs):
                nonlocal end_seconds
                start = time.perf_counter()
                _inner(*args, **kwargs)
                end_seconds = time.perf_counter() - start

            callback.on_train_end = timed
    trainer.train()
    if profiler is not None:
        profiler.stop()
        events = [(e.start_ns(), e.nbytes()) for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
        print(json.dumps({"variant": options.variant, "allocated_mib": peak_allocated_bytes(events) / 2**20}))
        return
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = sum(len(x) for x in dataset["input_ids"][: options.batch * options.steps])
    steady = times[1:] or times  # the first step pays one-off costs
    slow = getattr(trainer, "slow_tuning", None)
    projections = slow.projections_total if slow is not None else 0
    per_step = [hooks.get(step, 0.0) for step in range(2, len(times) + 1)] or [0.0]  # the steady steps, as `steady`
    print(json.dumps({"variant": options.variant, "step_s": statistics.median(steady), "peak_mib": peak,
                      "projections": projections, "end_s": end_seconds, "hook_s": statistics.median(per_step),
                      "tokens_per_s": tokens / sum(times)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded-default", help="embedded-default, tiny, qwen2.5-1.5b-random or a path")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--qlora", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--no-allocated", action="store_true",
                        help="on a CPU, skip the second (profiled) process per variant that measures allocated bytes")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--measure", default="time", choices=("time", "allocated"), help=argparse.SUPPRESS)
    parser.add_argument("--alignment-dir", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.variant:
        child(options)
        return
    import tempfile

    results: dict[str, list[dict]] = {v: [] for v in options.variants.split(",")}
    if "sft" not in results:
        sys.exit("--variants must include sft (the baseline of every ratio)")
    folder = tempfile.mkdtemp(prefix="overhead-alignment-")
    write_alignment_files(options, folder)
    passthrough = ["--model", options.model, "--steps", str(options.steps), "--batch", str(options.batch),
                   "--max-length", str(options.max_length), "--threads", str(options.threads), "--alignment-dir", folder]
    passthrough += ["--qlora"] * options.qlora + ["--gradient-checkpointing"] * options.gradient_checkpointing
    import torch

    measures = ["time"] + ["allocated"] * (not torch.cuda.is_available() and not options.no_allocated)

    def run_child(variant: str, measure: str) -> dict:
        out = subprocess.run([sys.executable, __file__, *passthrough, "--variant", variant, "--measure", measure],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"variant {variant} ({measure}) failed:\n{out.stderr[-3000:]}")
        return json.loads([row for row in out.stdout.splitlines() if row.startswith("{")][-1])

    for repeat in range(options.repeats):
        for variant in results:
            row: dict = {}
            for measure in measures:  # the timed process and the profiled one, back to back
                row.update(run_child(variant, measure))
            results[variant].append(row)
            print(f"repeat {repeat + 1}: {row}", file=sys.stderr)
    base = results["sft"]
    print(f"model={options.model} qlora={options.qlora} batch={options.batch} max_length={options.max_length} "
          f"steps={options.steps} repeats={options.repeats} (interleaved; ratios per repeat against that repeat's sft)")
    memory_name = "peak MiB" if torch.cuda.is_available() else "RSS MiB"
    print(f"{'variant':<10}{'step s':>9}{memory_name:>10}{'end s':>8}{'time ratio [min-max]':>25}"
          f"{'memory ratio [min-max]':>27}{'proj.':>7}{'hooks/step [min-max]':>26}"
          + (f"{'alloc MiB':>11}{'allocated ratio [min-max]':>30}" if "allocated" in measures else ""))
    for variant, rows in results.items():
        step = statistics.median(r["step_s"] for r in rows)
        peak = statistics.median(r["peak_mib"] for r in rows)
        end = statistics.median(r["end_s"] for r in rows)
        times = [r["step_s"] / b["step_s"] for r, b in zip(rows, base)]
        memory = [r["peak_mib"] / b["peak_mib"] for r, b in zip(rows, base)]
        # the methods' hooks as a share of the same run's step: timed inside one process, so machine noise between
        # runs cancels (masking runs inside the loss, not in a hook, and is not in this column)
        share = [r.get("hook_s", 0.0) / r["step_s"] for r in rows]
        print(f"{variant:<10}{step:>9.3f}{peak:>10.1f}{end:>8.2f}"
              f"{statistics.median(times):>10.3f} [{min(times):.3f}-{max(times):.3f}]"
              f"{statistics.median(memory):>12.3f} [{min(memory):.3f}-{max(memory):.3f}]"
              f"{int(statistics.median(r['projections'] for r in rows)):>7}"
              f"{statistics.median(share):>11.2%} [{min(share):.2%}-{max(share):.2%}]", end="")
        if "allocated" in measures:
            allocated = [r["allocated_mib"] / b["allocated_mib"] for r, b in zip(rows, base)]
            print(f"{statistics.median(r['allocated_mib'] for r in rows):>11.1f}"
                  f"{statistics.median(allocated):>13.4f} [{min(allocated):.4f}-{max(allocated):.4f}]", end="")
        print()


# ------------------------------------------------------------------------------------------------------------------
# Safety monitor overhead (issue 18): `python benchmarks/overhead.py safety-monitor [--model tiny]`


def safety_monitor_overhead(argv: list[str]) -> None:
    """Cost of :class:`~trl_safedistill.safety_monitor.SafetyMonitorCallback` as a fraction of training time.

    Trains SafeDistillTrainer (cascade, LoRA, the data and settings of the variants above) for ``--steps`` steps
    with a check every ``--check-every`` steps (and at step 0), the monitor's defaults otherwise (16 + 16 protocol
    calibration prompts, 64 new tokens, the default judge). Step time is timed without the checks (a callback ahead
    of the monitor); each check's wall time comes from the monitor's JSONL. The fraction at interval N is
    ``c / (N * s + c)`` with s the median step time and c the median check time (the first check, which also pays
    one-off imports, is printed apart). Goal: <= 10% at the default interval on the embedded default.
    """
    import tempfile
    from pathlib import Path

    from trl_safedistill.safety_monitor import DEFAULT_EVERY, LOG_FILE

    parser = argparse.ArgumentParser(prog="overhead.py safety-monitor", description=safety_monitor_overhead.__doc__)
    parser.add_argument("--model", default="embedded-default", help="embedded-default, tiny or a path")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--check-every", type=int, default=2)
    parser.add_argument("--every", type=int, default=DEFAULT_EVERY, help="the interval the fraction is given for")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args(argv)

    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback

    from trl_safedistill import SafeDistillConfig, SafeDistillTrainer
    from trl_safedistill.data.bbh_cot import load_bbh_cot
    from trl_safedistill.dataset import tokenize_records

    torch.set_num_threads(options.threads)
    model, tokenizer = build_model(options.model, False)
    records = load_bbh_cot("train")[: options.batch * (options.steps + 1)]
    dataset = tokenize_records(records, tokenizer, "cascade", max_length=options.max_length, overlong="truncate")
    output_dir = Path(tempfile.mkdtemp(prefix="safety-monitor-bench-"))
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    args = SafeDistillConfig(output_dir=str(output_dir), per_device_train_batch_size=options.batch,
                             max_steps=options.steps, learning_rate=1e-4, report_to=[], save_strategy="no",
                             logging_steps=10**6, seed=0, gradient_checkpointing=False, max_length=options.max_length,
                             shuffle_dataset=False, use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
                             dataloader_num_workers=0, distill_format="cascade", safety_monitor_every=options.check_every)
    trainer = SafeDistillTrainer(model, args, train_dataset=dataset.remove_columns(["record_id"]), processing_class=tokenizer,
                                 peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                        task_type="CAUSAL_LM"),
                                 callbacks=[StepTimer()])
    trainer.train()
    checks = [json.loads(line) for line in (output_dir / LOG_FILE).read_text().splitlines()]
    checks = [row for row in checks if row["event"] == "check"]
    step = statistics.median(times[1:] or times)
    check = statistics.median(row["seconds"] for row in checks[1:]) if len(checks) > 1 else checks[0]["seconds"]
    print(f"model={options.model} batch={options.batch} max_length={options.max_length} steps={options.steps} "
          f"checks={len(checks)} ({checks[0]['n_harmful']}+{checks[0]['n_benign']} prompts, "
          f"{checks[0]['max_new_tokens']} new tokens, judge {checks[0]['judge']})")
    print(f"step s {step:.3f}  check s {check:.3f} (first {checks[0]['seconds']:.3f})")
    for every in sorted({options.every, 10, 25, 50, 100}):
        print(f"every {every:>4} steps: {check / (every * step + check):.1%} of training time")


if __name__ == "__main__":
    if sys.argv[1:2] == ["safety-monitor"]:
        safety_monitor_overhead(sys.argv[2:])
    else:
        main()
