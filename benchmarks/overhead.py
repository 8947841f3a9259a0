"""Overhead of SafeDistillTrainer against plain TRL SFTTrainer, measured side by side in one run.

Every variant trains the same model on the same token sequences (the ``cascade`` rendering of the
shipped bbh-cot rationales) for the same steps; each runs in its own subprocess so that peak memory
is its own. Variants run interleaved (A B A B ...) ``--repeats`` times; the script prints the median
step time and the peak memory of each, and their ratios to plain SFTTrainer:

* ``sft``: TRL's SFTTrainer on ``input_ids``/``labels`` (its own loss);
* ``cascade``: SafeDistillTrainer, CasCoD's two-segment loss;
* ``slowed``: cascade + low-entropy masking (fraction 0.5) + slow tuning (project rule, every layer checked at
  every step, a budget of 0.05% of ||W0|| so that projections act within the measured steps; their count is
  printed).

Peak memory is the peak resident set size on a CPU (``ru_maxrss``) and ``torch.cuda.max_memory_allocated``
on a GPU. Goals (issue 2/3): step-time ratio <= 1.05, peak-memory ratio <= 1.02.

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

VARIANTS = ("sft", "cascade", "slowed")


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


def child(options: argparse.Namespace) -> None:
    """Train one variant and print one JSON line: median step time and peak memory."""
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from trl_safedistill import SafeDistillConfig, SafeDistillTrainer
    from trl_safedistill.data.bbh_cot import load_bbh_cot
    from trl_safedistill.dataset import tokenize_records

    torch.set_num_threads(options.threads)
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

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    if options.variant == "sft":
        trainer = SFTTrainer(model, SFTConfig(**common), train_dataset=dataset.select_columns(["input_ids", "labels"]),
                             processing_class=tokenizer, peft_config=peft_config, callbacks=[StepTimer()])
    else:
        extra = {}
        if options.variant == "slowed":
            # A small budget, so that projections act within the few steps measured (their count is printed).
            extra = dict(entropy_mask_mode="fraction", entropy_mask_quantile=0.5, slow_tuning_rule="project",
                         slow_tuning_budget=0.0005)
        args = SafeDistillConfig(**common, distill_format="cascade", **extra)
        trainer = SafeDistillTrainer(model, args, train_dataset=dataset.remove_columns(["record_id"]),
                                     processing_class=tokenizer, peft_config=peft_config, callbacks=[StepTimer()])
    trainer.train()
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
        tokens = sum(len(x) for x in dataset["input_ids"][: options.batch * options.steps])
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        tokens = sum(len(x) for x in dataset["input_ids"][: options.batch * options.steps])
    steady = times[1:] or times  # the first step pays one-off costs
    slow = getattr(trainer, "slow_tuning", None)
    projections = slow.projections_total if slow is not None else 0
    print(json.dumps({"variant": options.variant, "step_s": statistics.median(steady), "peak_mib": peak,
                      "projections": projections,
                      "tokens_per_s": tokens / sum(times)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded-default", help="embedded-default, tiny, qwen2.5-1.5b-random or a path")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--qlora", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.variant:
        child(options)
        return
    results: dict[str, list[dict]] = {v: [] for v in options.variants.split(",")}
    passthrough = ["--model", options.model, "--steps", str(options.steps), "--batch", str(options.batch),
                   "--max-length", str(options.max_length), "--threads", str(options.threads)]
    passthrough += ["--qlora"] * options.qlora + ["--gradient-checkpointing"] * options.gradient_checkpointing
    for repeat in range(options.repeats):
        for variant in results:
            out = subprocess.run([sys.executable, __file__, *passthrough, "--variant", variant],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"variant {variant} failed:\n{out.stderr[-3000:]}")
            line = [row for row in out.stdout.splitlines() if row.startswith("{")][-1]
            results[variant].append(json.loads(line))
            print(f"repeat {repeat + 1}: {results[variant][-1]}", file=sys.stderr)
    base_time = statistics.median(r["step_s"] for r in results["sft"])
    base_peak = statistics.median(r["peak_mib"] for r in results["sft"])
    print(f"model={options.model} qlora={options.qlora} batch={options.batch} max_length={options.max_length} "
          f"steps={options.steps} repeats={options.repeats}")
    print(f"{'variant':<10}{'step s':>10}{'peak MiB':>12}{'tok/s':>10}{'time ratio':>12}{'memory ratio':>14}")
    for variant, rows in results.items():
        step = statistics.median(r["step_s"] for r in rows)
        peak = statistics.median(r["peak_mib"] for r in rows)
        rate = statistics.median(r["tokens_per_s"] for r in rows)
        print(f"{variant:<10}{step:>10.3f}{peak:>12.1f}{rate:>10.1f}{step / base_time:>12.3f}{peak / base_peak:>14.3f}")


if __name__ == "__main__":
    main()
