"""Runs that survive kills: resume only from complete checkpoints, rerun into a folder resumes, demo stages resume.

A kill while a checkpoint is written leaves a ``checkpoint-N`` folder without its last files; transformers'
``get_last_checkpoint`` returns it anyway and every later resume failed on it. These tests make such folders the
real way (a SIGKILLed ``train`` process, a kill raised inside ``Trainer``'s save) and check that reruns resume from
the checkpoint before it and end with the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trl_safedistill.checkpoints import (
    CheckpointError,
    callback_files,
    is_complete_checkpoint,
    missing_part,
    newest_complete_checkpoint,
    resolve_resume,
)
from trl_safedistill.train import main

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
ADAPTER = "adapter_model.safetensors"


def write_records(path: Path, n: int = 6) -> Path:
    rows = [{"id": f"x{i}", "question": f"What is {i} times 2?", "rationale": f"{i} doubled is {2 * i}.",
             "answer": str(2 * i)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_flags(model: Path, records: Path, out: Path, *extra: str) -> list[str]:
    """A 3-step LoRA run of the tiny model, a checkpoint after every step."""
    return [
        "--model_name_or_path", str(model), "--dataset_name", str(records), "--distill_format", "standard",
        "--output_dir", str(out), "--max_steps", str(STEPS), "--per_device_train_batch_size", "2", "--use_cpu", "true",
        "--bf16", "false", "--report_to", "none", "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1",
        "--gradient_checkpointing", "false", "--max_length", "128", "--use_peft", "--lora_r", "4",
        "--lora_target_modules", "all-linear", "--learning_rate", "0.05", "--seed", "0", "--disable_tqdm", "true", *extra,
    ]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return write_records(tmp_path_factory.mktemp("data") / "r.jsonl")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, records) -> Path:
    """An uninterrupted run: checkpoint-1..3 kept, the final adapter in the folder."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(train_flags(tiny_model_dir, records, out)) == 0
    return out


@pytest.fixture(scope="module")
def slowed_reference(tmp_path_factory, tiny_model_dir, records) -> Path:
    out = tmp_path_factory.mktemp("slowed") / "out"
    assert main(train_flags(tiny_model_dir, records, out, "--slow_tuning_rule", "project")) == 0
    return out


@pytest.fixture
def steps_trained(monkeypatch) -> list[int]:
    """The optimizer steps this process trains (global step of each ``training_step`` call)."""
    from trl_safedistill.trainer import SafeDistillTrainer

    steps: list[int] = []
    original = SafeDistillTrainer.training_step

    def counting(self, *args, **kwargs):
        steps.append(self.state.global_step + 1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SafeDistillTrainer, "training_step", counting)
    return steps


def copy_run(source: Path, target: Path, keep: tuple[int, ...]) -> Path:
    """``source``'s checkpoints ``keep`` only, as a run killed after them would leave (no final adapter)."""
    target.mkdir(parents=True)
    for step in keep:
        shutil.copytree(source / f"checkpoint-{step}", target / f"checkpoint-{step}")
    return target


def assert_same_adapter(out: Path, reference: Path) -> None:
    got, want = load_file(out / ADAPTER), load_file(reference / ADAPTER)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------- the library
def test_a_copy_without_its_last_written_file_is_incomplete(reference, tmp_path):
    complete = reference / "checkpoint-2"
    assert is_complete_checkpoint(complete)
    partial = shutil.copytree(complete, tmp_path / "checkpoint-2")
    (partial / "trainer_state.json").unlink()
    assert missing_part(partial) == "no trainer_state.json"
    (partial / "trainer_state.json").write_text('{"global_step": 2, "log_hist')  # a write the kill cut short
    assert missing_part(partial) == "trainer_state.json is cut short"
    (partial / "trainer_state.json").write_text(json.dumps({"global_step": 1}))  # another step's state
    assert missing_part(partial) == "trainer_state.json is of step 1"
    empty = tmp_path / "checkpoint-3"
    empty.mkdir()  # killed before the weights
    assert missing_part(empty) == "no model weights"
    assert not is_complete_checkpoint(tmp_path / "checkpoint-4")


def test_newest_complete_checkpoint_skips_newer_incomplete_ones(reference, tmp_path):
    out = copy_run(reference, tmp_path / "out", keep=(1, 2, 3))
    (out / "checkpoint-3" / "trainer_state.json").unlink()
    (out / "checkpoint-10").mkdir()
    scan = newest_complete_checkpoint(out)
    assert scan.newest == out / "checkpoint-2"
    assert scan.skipped_text() == "checkpoint-10 (no model weights), checkpoint-3 (no trainer_state.json)"
    assert newest_complete_checkpoint(tmp_path / "nothing-here").newest is None


def test_slow_tuning_checkpoints_need_the_anchor_written_after_the_trainer_state(slowed_reference, reference):
    class Args:
        slow_tuning_rule = "project"

    extra = callback_files(Args())
    assert extra == ("slow_tuning_anchor.safetensors", "slow_tuning_state.json")
    assert callback_files(object()) == ()  # TRL's own SFTConfig (the alignment stage): nothing added
    assert is_complete_checkpoint(slowed_reference / "checkpoint-2", extra)
    assert missing_part(reference / "checkpoint-2", extra) == "no slow_tuning_anchor.safetensors"


def test_resume_requests_that_cannot_be_met_are_one_line_errors(reference, tmp_path):
    out = copy_run(reference, tmp_path / "out", keep=(1,))
    (out / "checkpoint-1" / "trainer_state.json").unlink()
    with pytest.raises(CheckpointError, match=r"^--resume_from_checkpoint true: no complete checkpoint in .*"
                                              r"skipped incomplete checkpoint-1 \(no trainer_state.json\)"):
        resolve_resume(out, "true")
    with pytest.raises(CheckpointError, match=r"checkpoint-1: not a complete checkpoint \(no trainer_state.json\)"):
        resolve_resume(out, str(out / "checkpoint-1"))
    with pytest.raises(CheckpointError, match="contradict"):
        resolve_resume(out, "true", overwrite=True)
    with pytest.raises(CheckpointError, match="--overwrite_output_dir"):
        resolve_resume(out, "false")
    decision = resolve_resume(out, None)
    assert decision.checkpoint is None and "starting from step 0" in decision.message
    assert resolve_resume(tmp_path / "fresh", None) == resolve_resume(tmp_path / "fresh", "false")


# ------------------------------------------------------------------------------------------- `trl-safedistill train`
KILLED_SAVE = """
import os, sys, time
from pathlib import Path
from transformers import Trainer

original = Trainer._save_rng_state

def slow_save(self, output_dir):
    # The weights, optimizer and scheduler of this checkpoint are written; its RNG and trainer state are not yet
    if self.state.global_step == int(os.environ["KILL_AT_STEP"]):
        Path(os.environ["KILL_MARKER"]).write_text(output_dir)
        time.sleep(600)
    return original(self, output_dir)

Trainer._save_rng_state = slow_save
from trl_safedistill.train import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_train_run_sigkilled_while_saving_resumes_from_the_checkpoint_before(
        tiny_model_dir, records, reference, tmp_path, steps_trained, capsys):
    out = tmp_path / "out"
    flags = train_flags(tiny_model_dir, records, out, "--save_total_limit", "1")  # as the demo keeps them
    marker = tmp_path / "saving"
    env = {**os.environ, "KILL_AT_STEP": "2", "KILL_MARKER": str(marker), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, *flags], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the run never reached the save of checkpoint-2"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert (out / "checkpoint-2" / ADAPTER).exists() and not (out / "checkpoint-2" / "trainer_state.json").exists()
    assert is_complete_checkpoint(out / "checkpoint-1")

    assert main(flags) == 0  # the same command again
    assert steps_trained == [2, 3]
    console = capsys.readouterr().out
    assert f"resuming from {out / 'checkpoint-1'} (skipped incomplete checkpoint-2 (no trainer_state.json))" in console
    assert_same_adapter(out, reference)
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-3"]


def test_resume_from_checkpoint_true_takes_the_newest_complete_one(tiny_model_dir, records, reference, tmp_path,
                                                                   steps_trained, capsys):
    out = copy_run(reference, tmp_path / "out", keep=(1, 2))
    assert main(train_flags(tiny_model_dir, records, out, "--resume_from_checkpoint", "true")) == 0
    assert steps_trained == [3]
    assert f"resuming from {out / 'checkpoint-2'}" in capsys.readouterr().out
    assert_same_adapter(out, reference)


def test_resume_from_a_named_checkpoint(tiny_model_dir, records, reference, tmp_path, steps_trained):
    out = copy_run(reference, tmp_path / "out", keep=(1, 2))
    assert main(train_flags(tiny_model_dir, records, out, "--resume_from_checkpoint", str(out / "checkpoint-1"))) == 0
    assert steps_trained == [2, 3]
    assert_same_adapter(out, reference)


def test_a_rerun_into_a_folder_with_checkpoints_resumes_and_keeps_them(tiny_model_dir, records, reference, tmp_path,
                                                                        steps_trained, capsys):
    out = copy_run(reference, tmp_path / "out", keep=(1, 2))
    assert main(train_flags(tiny_model_dir, records, out, "--save_total_limit", "2")) == 0
    assert steps_trained == [3]
    assert f"resuming from {out / 'checkpoint-2'}; --overwrite_output_dir starts from step 0" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert_same_adapter(out, reference)


def test_overwrite_output_dir_starts_from_step_0_and_removes_the_old_checkpoints(tiny_model_dir, records, reference,
                                                                                   tmp_path, steps_trained, capsys):
    out = copy_run(reference, tmp_path / "out", keep=(1, 2, 3))
    (out / "checkpoint-3").rename(out / "checkpoint-9")  # a longer previous run: must not be resumed from later
    assert main(train_flags(tiny_model_dir, records, out, "--overwrite_output_dir")) == 0
    assert steps_trained == [1, 2, 3]
    assert "--overwrite_output_dir: starting from step 0, removing 3 checkpoint(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert_same_adapter(out, reference)


def test_slow_tuning_run_killed_before_its_anchor_resumes_from_the_checkpoint_before(
        tiny_model_dir, records, slowed_reference, tmp_path, steps_trained, capsys):
    out = copy_run(slowed_reference, tmp_path / "out", keep=(1, 2))
    for name in ("slow_tuning_anchor.safetensors", "slow_tuning_state.json"):  # killed after the trainer state
        (out / "checkpoint-2" / name).unlink()
    assert main(train_flags(tiny_model_dir, records, out, "--slow_tuning_rule", "project")) == 0
    assert steps_trained == [2, 3]
    assert "skipped incomplete checkpoint-2 (no slow_tuning_anchor.safetensors)" in capsys.readouterr().out
    assert_same_adapter(out, slowed_reference)


# ------------------------------------------------------------------------------------------------------ the demo
def test_a_demo_stage_killed_while_saving_resumes_without_cleanup(tmp_path, monkeypatch, capsys):
    from transformers import Trainer

    from trl_safedistill.experiments.demo_pipeline import DemoPipeline
    from trl_safedistill.experiments.sizes import get_size

    size = get_size("tiny")  # 4 distillation steps, a checkpoint every 2
    finished = DemoPipeline(size, tmp_path / "finished", method_names=["standard"], quiet=True)
    finished.run_start()
    finished.run_distil(finished.methods[0])
    run_dir = tmp_path / "run"
    shutil.copytree(tmp_path / "finished", run_dir)
    original = Trainer._save_rng_state

    def killed(self, output_dir):
        if self.state.global_step == size.distil_steps:
            raise KeyboardInterrupt("killed while saving")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", killed)
    pipeline = DemoPipeline(size, run_dir, method_names=["standard"], quiet=True, force={"distil:standard"})
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_distil(pipeline.methods[0])
    monkeypatch.setattr(Trainer, "_save_rng_state", original)
    trainer_dir = run_dir / "distil/standard/trainer"
    assert json.loads((run_dir / "state.json").read_text())["stages"]["distil:standard"]["status"] == "running"
    assert not is_complete_checkpoint(trainer_dir / f"checkpoint-{size.distil_steps}")
    assert is_complete_checkpoint(trainer_dir / "checkpoint-2")
    capsys.readouterr()

    resumed = DemoPipeline(size, run_dir, method_names=["standard"], quiet=True)
    result = resumed.run_distil(resumed.methods[0])
    assert "distil:standard" in resumed.runner.ran
    assert result["resumed_from"] == 2 and result["steps"] == size.distil_steps
    assert "skipped incomplete checkpoint-4 (no trainer_state.json); resuming from checkpoint-2" in capsys.readouterr().err
    assert json.loads((run_dir / "state.json").read_text())["stages"]["distil:standard"]["status"] == "done"
    assert_same_adapter(run_dir / "distil/standard/final", tmp_path / "finished/distil/standard/final")


def test_slow_tuning_anchor_is_on_disk_before_the_trainer_state(tiny_model_dir, records, tmp_path, monkeypatch):
    """The anchor is written before transformers' trainer_state.json (the last file of a complete checkpoint), so
    a kill at any point after trainer_state.json cannot leave a checkpoint without its anchor."""
    from transformers.trainer_callback import TrainerState

    seen: list[tuple[str, bool]] = []
    original = TrainerState.save_to_json

    def recording(self, json_path):
        folder = Path(json_path).parent
        if folder.name.startswith("checkpoint-"):
            seen.append((folder.name, (folder / "slow_tuning_anchor.safetensors").exists()
                         and (folder / "slow_tuning_state.json").exists()))
        return original(self, json_path)

    monkeypatch.setattr(TrainerState, "save_to_json", recording)
    out = tmp_path / "out"
    assert main(train_flags(tiny_model_dir, records, out, "--slow_tuning_rule", "project")) == 0
    assert seen and all(present for _, present in seen), seen
