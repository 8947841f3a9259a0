"""Slow tuning on FSDP2-sharded parameters against the same model unsharded, for ``tests/test_multiprocess.py``.

accelerate runs FSDP only on accelerators (on a CPU it picks DDP, ``MULTI_CPU``), so this worker shards with torch's
own FSDP2 (``fully_shard`` on each decoder layer and the root, gloo on CPU) and drives
:class:`~trl_safedistill.methods.slow_tuning.callback.SlowTuningCallback`'s hooks itself, as the Trainer would:
``on_train_begin`` (the anchor, on gathered parameters), then per optimizer step ``on_step_end`` (the check and its
correction, written back shard by shard). Every case trains :data:`STEPS` plain-SGD steps on a global batch of 4
equal-length sequences: 4 in one unsharded process, or 2 per process x 2 processes (FSDP2 averages the ranks'
gradients, so the step equals one process's). Each rank writes ``OUT_DIR/<case>.rank<r>.pt``: the loss of every
step, every check's record, the number of DTensor parameters (the run really was sharded) and the full trainable
weights at the end.

Usage: ``torchrun --nproc_per_node 2 tests/fsdp2_worker.py MODEL_DIR OUT_DIR [CASE ...]`` (sharded), or
``python tests/fsdp2_worker.py MODEL_DIR OUT_DIR`` (one process, unsharded). ``MODEL_DIR`` is
``tests/multiprocess_worker.py``'s tiny model folder, with ``reference.safetensors`` for the ``direction`` rule.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

GLOBAL_BATCH = 4
STEPS = 2
#: case -> (SLowEDArguments fields, uses LoRA)
CASES: dict[str, tuple[dict, bool]] = {
    "slow_project": ({"slow_tuning_rule": "project", "slow_tuning_budget": 0.002}, True),
    "slow_scale": ({"slow_tuning_rule": "scale", "slow_tuning_pull": 0.3}, False),
    "slow_direction": ({"slow_tuning_rule": "direction", "slow_tuning_budget": 0.01}, True),
}


def run_case(name: str, model_dir: Path, out_dir: Path) -> None:
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    from trl_safedistill.methods.arguments import SLowEDArguments
    from trl_safedistill.methods.slow_tuning.callback import SlowTuningCallback, full_parameters

    fields, lora = CASES[name]
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.manual_seed(0)  # LoRA's A initialisation: the same on every rank and in the one-process run
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    if world > 1:
        for layer in model.get_decoder().layers:
            fully_shard(layer)
        fully_shard(model)
    if fields["slow_tuning_rule"] == "direction":
        fields = {**fields, "slow_tuning_reference": str(model_dir / "reference.safetensors")}
    callback = SlowTuningCallback(SLowEDArguments(slow_tuning_log_layers=False, **fields))
    args = SimpleNamespace(output_dir=str(out_dir / name))
    state = SimpleNamespace(global_step=0, epoch=0.0, is_world_process_zero=rank == 0)
    control = SimpleNamespace()
    callback.on_train_begin(args, state, control, model=model)
    generator = torch.Generator().manual_seed(1)
    data = torch.randint(0, model.config.vocab_size, (GLOBAL_BATCH, 12), generator=generator)
    per_rank = GLOBAL_BATCH // world
    batch = data[rank * per_rank:(rank + 1) * per_rank]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    losses = []
    for step in range(1, STEPS + 1):
        loss = model(input_ids=batch, labels=batch).loss  # equal lengths: the mean of rank means is the global mean
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        total = loss.detach().clone()
        if world > 1:
            dist.all_reduce(total)
            total /= world
        losses.append(float(total))
        state.global_step, state.epoch = step, step / STEPS
        callback.on_step_end(args, state, control)
    sharded = sum(isinstance(p, DTensor) for p in model.parameters())
    with full_parameters(model, modify=False):
        weights = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    checks = [{k: v for k, v in record.items() if k in ("step", "drift_max", "drift_max_before", "projections")}
              for record in callback.history]
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"world": world, "loss": losses, "checks": checks, "sharded": sharded, "weights": weights},
               out_dir / f"{name}.rank{rank}.pt")


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    model_dir, out_dir = Path(argv[0]), Path(argv[1])
    for name in argv[2:] or list(CASES):
        run_case(name, model_dir, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
