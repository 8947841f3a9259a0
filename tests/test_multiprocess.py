"""A real two-process run (``accelerate launch``, DDP over gloo on CPU) against one process on the same global batch.

``tests/multiprocess_worker.py`` trains every method (formats ``standard``, ``cascade``, ``answer_first``; a model
that takes no loss kwargs, so Trainer passes ``num_items_in_batch=None``; low-entropy masking in both modes, with
and without gradient accumulation; slow tuning's ``project`` (LoRA), ``scale`` (full fine-tuning) and
``direction`` (LoRA, against a reference); the safety monitor checking at every step) for 2 SGD steps on a global batch of 4 sequences: once as
``2 processes x 2 sequences`` (``x 1 sequence x 2 accumulation steps`` for the ``_GA`` cases), launched once with
``recipes/accelerate/ddp_cpu.yaml``, and once as ``1 process x 4 sequences``.

Tolerance: the logged loss of each step, slow tuning's drift and the final trainable weights agree to
``rtol=1e-4`` (weights also ``atol=1e-6``): float32 on both sides, the only difference being the order of the
sums (gloo's all-reduce of the two ranks' gradients against one process's batch). A gradient off by the world
size (the defect this test was written against) moves the step-2 loss and the weights by far more; so does a
masking threshold taken per micro-batch instead of per step. Both ranks end with identical weights. The safety
monitor's logged checks (refusal, over-refusal, degenerate share, judge; not their seconds) are equal on both ranks
and to the one-process run's: greedy generation on equal weights, the main rank's numbers broadcast.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import make_tiny_model
from .fsdp2_worker import CASES as FSDP2_CASES
from .multiprocess_worker import CASES

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "multiprocess_worker.py"
FSDP2_WORKER = ROOT / "tests" / "fsdp2_worker.py"
ACCELERATE_CONFIG = ROOT / "recipes" / "accelerate" / "ddp_cpu.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run(command: list[str], log: Path) -> None:
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT, timeout=600)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"{' '.join(command[:4])} ... exited {done.returncode}:\n{tail}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """The tiny model, its tokenizer and a reference (``reference.safetensors``, for the ``direction`` rule)."""
    from safetensors.torch import save_file

    model_dir = tmp_path_factory.mktemp("multiprocess") / "model"
    model = make_tiny_model(len(tiny_tokenizer), seed=2)
    with torch.no_grad():  # spread-out entropies, so that masking masks some tokens and keeps others
        model.get_input_embeddings().weight.mul_(40)
    model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    generator = torch.Generator().manual_seed(0)
    reference = {k: (v + 1e-2 * torch.randn(v.shape, generator=generator)).contiguous()
                 for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(reference, str(model_dir / "reference.safetensors"))
    return model_dir


@pytest.fixture(scope="module")
def runs(model_dir):
    """The worker's results: (one-process dir, two-process dir), and the seconds each took."""
    root = model_dir.parent
    seconds = {}
    start = time.monotonic()
    _run([sys.executable, str(WORKER), str(model_dir), str(root / "one")], root / "one.log")
    seconds["one"] = time.monotonic() - start
    start = time.monotonic()
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG),
                "--num_processes", "2", "--main_process_port", str(_free_port())]
    _run([*launcher, str(WORKER), str(model_dir), str(root / "two")], root / "two.log")
    seconds["two"] = time.monotonic() - start
    print(f"multiprocess runs: one process {seconds['one']:.0f}s, two processes {seconds['two']:.0f}s")
    return root / "one", root / "two"


def _load(directory: Path, case: str, rank: int = 0) -> dict:
    return torch.load(directory / f"{case}.rank{rank}.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one_process_on_the_same_global_batch(runs, case):
    one_dir, two_dir = runs
    one, two, other_rank = _load(one_dir, case), _load(two_dir, case), _load(two_dir, case, rank=1)
    assert one["world"] == 1 and two["world"] == 2  # really two processes, not two single runs

    torch.testing.assert_close(torch.tensor(two["metrics"]["loss"]), torch.tensor(one["metrics"]["loss"]), rtol=1e-4,
                               atol=0.0, msg=lambda m: f"{case}: loss per step differs\n{m}")
    assert len(one["metrics"]["loss"]) == 2
    for name, value in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], value, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{case}: final {name} differs\n{m}")
        assert torch.equal(other_rank["weights"][name], two["weights"][name]), f"{case}: ranks disagree on {name}"

    metrics = one["metrics"]
    if "entropy_mask/masked_fraction" in metrics:
        # step 1 masks some tokens and keeps others (after it, a fixed threshold may mask none: entropies grew)
        assert 0 < metrics["entropy_mask/masked_fraction"][0] < 1
        assert 0 < two["metrics"]["entropy_mask/masked_fraction"][0] < 1
    if case == "monitor":  # a check at steps 0, 1, 2 on both ranks, equal to the one-process run's
        assert [entry["step"] for entry in one["safety"]] == [0, 1, 2]
        assert two["safety"] == one["safety"] and other_rank["safety"] == two["safety"]
        assert one["safety"][0]["safety/judge"] == "refusal-v1"
    else:
        assert one["safety"] == []
    if case.startswith("slow_"):
        assert sum(metrics["slow_tuning/projections_step"]) > 0  # the rule acted
        assert two["metrics"]["slow_tuning/projections_step"] == metrics["slow_tuning/projections_step"]
        torch.testing.assert_close(torch.tensor(two["metrics"]["slow_tuning/drift_max"]),
                                   torch.tensor(metrics["slow_tuning/drift_max"]), rtol=1e-4, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_slow_tuning_matches_one_process(runs, tmp_path, stage):
    """ZeRO-2 keeps the parameters whole but the optimizer's fp32 masters partitioned; ZeRO-3 shards the parameters
    too, and slow tuning gathers them for the anchor and each check. Under both, corrections are written into
    DeepSpeed's fp32 masters (else the next step would start from the uncorrected ones); losses, drift and final
    (gathered) weights equal one process's (rtol 1e-4), with the shipped recipe's config."""
    pytest.importorskip("deepspeed")
    one_dir, _ = runs
    config = tmp_path / f"{stage}_cpu.yaml"
    text = (ROOT / "recipes" / "accelerate" / f"deepspeed_{stage}.yaml").read_text()
    assert "mixed_precision: bf16" in text
    config.write_text(text.replace("mixed_precision: bf16", 'mixed_precision: "no"'))  # CPU, float32 as one_dir
    cases = ["slow_project", "slow_scale", "slow_direction"]
    model_dir = one_dir.parent / "model"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                "--num_processes", "2", "--main_process_port", str(_free_port())]
    _run([*launcher, str(WORKER), str(model_dir), str(tmp_path / stage), *cases], tmp_path / f"{stage}.log")
    for case in cases:
        one, two = _load(one_dir, case), _load(tmp_path / stage, case)
        assert two["world"] == 2
        torch.testing.assert_close(torch.tensor(two["metrics"]["loss"]), torch.tensor(one["metrics"]["loss"]), rtol=1e-4, atol=0.0)
        torch.testing.assert_close(torch.tensor(two["metrics"]["slow_tuning/drift_max"]),
                                   torch.tensor(one["metrics"]["slow_tuning/drift_max"]), rtol=1e-4, atol=1e-7)
        for name, value in one["weights"].items():
            torch.testing.assert_close(two["weights"][name], value, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_fsdp2_sharded_slow_tuning_matches_one_unsharded_process(model_dir, tmp_path):
    """FSDP2 (torch ``fully_shard``, 2 processes, gloo) shards every parameter into DTensors; slow tuning gathers
    them for the anchor and each check and writes each rank's shard of the correction back. Losses, every check's
    drift and projection count, and the final (gathered) weights equal one unsharded process's (rtol 1e-4); both
    ranks end with identical weights. Without the write-back the weights differ by ~0.05 (checked when written).
    accelerate runs FSDP only on accelerators, so ``tests/fsdp2_worker.py`` drives the callback's hooks itself."""
    _run([sys.executable, str(FSDP2_WORKER), str(model_dir), str(tmp_path / "one")], tmp_path / "one.log")
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
          str(FSDP2_WORKER), str(model_dir), str(tmp_path / "two")], tmp_path / "two.log")
    for case in FSDP2_CASES:
        one, two = _load(tmp_path / "one", case), _load(tmp_path / "two", case)
        other_rank = _load(tmp_path / "two", case, rank=1)
        assert (one["world"], two["world"]) == (1, 2) and one["sharded"] == 0 and two["sharded"] > 0
        torch.testing.assert_close(torch.tensor(two["loss"]), torch.tensor(one["loss"]), rtol=1e-4, atol=0.0)
        assert [c["projections"] for c in two["checks"]] == [c["projections"] for c in one["checks"]]
        assert sum(c["projections"] for c in one["checks"]) > 0, f"{case}: the rule never acted"
        for key in ("drift_max", "drift_max_before"):
            torch.testing.assert_close(torch.tensor([c[key] for c in two["checks"]]),
                                       torch.tensor([c[key] for c in one["checks"]]), rtol=1e-4, atol=1e-7)
        assert set(two["weights"]) == set(one["weights"])
        for name, value in one["weights"].items():
            torch.testing.assert_close(two["weights"][name], value, rtol=1e-4, atol=1e-6,
                                       msg=lambda m, name=name, case=case: f"{case}: final {name} differs\n{m}")
            assert torch.equal(other_rank["weights"][name], two["weights"][name]), f"{case}: ranks disagree on {name}"


def test_slow_tuning_refuses_fsdp1_and_a_quantized_base_under_sharding_at_start():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from trl_safedistill.errors import UserError
    from trl_safedistill.methods.slow_tuning.callback import check_sharding

    model = make_tiny_model(64)

    def fsdp(version: int) -> SimpleNamespace:
        return SimpleNamespace(distributed_type=DistributedType.FSDP,
                               state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=version)))

    with pytest.raises(UserError, match="not supported under FSDP1"):
        check_sharding(model, fsdp(1))
    check_sharding(model, fsdp(2))  # FSDP2: allowed (gathered DTensors)
    zero3 = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED,
                            state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)))
    check_sharding(model, zero3)  # full-precision base: allowed (gathered)

    class Params4bit(torch.nn.Parameter):  # the class name bitsandbytes gives a 4-bit weight
        pass

    model.model.layers[0].mlp.up_proj.weight = Params4bit(model.model.layers[0].mlp.up_proj.weight.data, requires_grad=False)
    with pytest.raises(UserError, match="ZeRO-3 needs full base weights.*quantized"):
        check_sharding(model, zero3)
    with pytest.raises(UserError, match="under FSDP needs full base weights.*quantized"):
        check_sharding(model, fsdp(2))
    check_sharding(model, SimpleNamespace(distributed_type=DistributedType.MULTI_GPU, state=None))  # DDP: fine
