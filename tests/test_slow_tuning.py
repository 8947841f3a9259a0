"""Slow tuning: the drift budget holds at every step (full weights, LoRA, QLoRA), the rules differ, resume is exact.

Drift is re-measured independently of the callback (forming s·B·A and dequantizing the 4-bit base), after every
optimizer step, with a large learning rate so that an unconstrained run leaves the budget within a few steps.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

from trl_safedistill.methods.arguments import SLowEDArguments
from trl_safedistill.methods.slow_tuning import ANCHOR_FILE, DRIFT_LOG_FILE, STATE_FILE, SlowTuningCallback

VOCAB = 128


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and leave the other core to the rest of the suite)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_tiny_model(vocab_size: int, seed: int = 0, hidden_size: int = 32) -> LlamaForCausalLM:
    """conftest.make_tiny_model with a small vocabulary (conftest is not importable as a module here)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def dataset(n: int = 16, length: int = 12) -> Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (n, length), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def training_args(out, steps: int, lr: float = 1e-2, **kw) -> TrainingArguments:
    base = dict(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=lr,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


def lora_model(init_lora_weights=True, model=None):
    from peft import LoraConfig, get_peft_model

    model = model if model is not None else make_tiny_model(VOCAB)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=init_lora_weights)
    torch.manual_seed(1)
    return get_peft_model(model, config)


class IndependentDrift(TrainerCallback):
    """Relative drift ||W_eff - W0_eff||_F / ||W0_eff||_F per layer, measured by brute force after every step."""

    def __init__(self, model):
        self.model = model
        self.w0 = {name: w.clone() for name, w in self.effective(model).items()}
        self.max_per_step: list[float] = []

    @staticmethod
    @torch.no_grad()
    def effective(model) -> dict[str, torch.Tensor]:
        from peft.tuners.lora import LoraLayer
        from peft.utils.integrations import dequantize_module_weight

        out = {}
        lora_params = set()
        for name, m in model.named_modules():
            if isinstance(m, LoraLayer):
                base = dequantize_module_weight(m.get_base_layer()).float()
                a, b = m.lora_A["default"].weight.float(), m.lora_B["default"].weight.float()
                out[name] = base + m.scaling["default"] * (b @ a)
                lora_params.update((id(m.lora_A["default"].weight), id(m.lora_B["default"].weight)))
        for name, p in model.named_parameters():
            if p.requires_grad and p.ndim >= 2 and id(p) not in lora_params:
                out[name] = p.detach().float().clone()
        return out

    def drifts(self) -> dict[str, float]:
        now = self.effective(self.model)
        return {n: float((now[n] - self.w0[n]).norm() / self.w0[n].norm()) for n in self.w0}

    def on_step_end(self, args, state, control, **kwargs):
        self.max_per_step.append(max(self.drifts().values()))


def run(model, args: TrainingArguments, slowed: SLowEDArguments | None, trainer_cls=Trainer, resume=None, extra=()):
    callback = SlowTuningCallback(slowed) if slowed is not None else None
    monitor = IndependentDrift(model)
    callbacks = ([callback] if callback else []) + [monitor, *extra]
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, callback, monitor


BUDGET = 0.05


@pytest.mark.parametrize("kind", ["full", "lora", "lora_nonzero_init"])
def test_project_keeps_drift_within_budget(tmp_path, kind):
    model = {
        "full": lambda: make_tiny_model(VOCAB),
        "lora": lambda: lora_model(),
        "lora_nonzero_init": lambda: lora_model(init_lora_weights=False),
    }[kind]()
    steps = 15 if kind == "lora_nonzero_init" else 30
    slowed = SLowEDArguments(slow_tuning_rule="project", slow_tuning_budget=BUDGET)
    trainer, callback, monitor = run(model, training_args(tmp_path, steps), slowed)
    assert len(monitor.max_per_step) == steps
    assert max(monitor.max_per_step) <= BUDGET * (1 + 1e-4)
    assert max(monitor.max_per_step) >= BUDGET * 0.99  # the cap was reached, so it bit
    assert callback.projections_total > 0
    # the callback's own measurement agrees with brute force
    ours = [h["drift_max"] for h in callback.history]
    assert ours == pytest.approx(monitor.max_per_step, rel=1e-3)
    logged = [e for e in trainer.state.log_history if "slow_tuning/drift_max" in e]
    assert len(logged) == steps and all(e["slow_tuning/drift_max"] <= BUDGET * (1 + 1e-4) for e in logged)
    lines = (tmp_path / DRIFT_LOG_FILE).read_text().splitlines()
    assert len(lines) == steps and "layers" in json.loads(lines[-1])


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_rule_off_leaves_the_budget(tmp_path, kind):
    model = make_tiny_model(VOCAB) if kind == "full" else lora_model()
    _, _, monitor = run(model, training_args(tmp_path, 10), SLowEDArguments(slow_tuning_rule="off"))
    assert max(monitor.max_per_step) > 3 * BUDGET


def test_qlora_4bit_base_layer(tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    make_tiny_model(VOCAB, hidden_size=64).save_pretrained(tmp_path / "base")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=quant, device_map="cpu")
    model = lora_model(model=base)
    assert type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    slowed = SLowEDArguments(slow_tuning_rule="project", slow_tuning_budget=BUDGET)
    _, callback, monitor = run(model, training_args(tmp_path / "out", 6), slowed)
    assert max(monitor.max_per_step) <= BUDGET * (1 + 1e-4)
    assert callback.projections_total > 0
    assert [h["drift_max"] for h in callback.history] == pytest.approx(monitor.max_per_step, rel=1e-3)


def test_scale_rule_and_budget_schedule(tmp_path):
    # scale: the drift of a pulled run stays below the unconstrained one
    slowed = SLowEDArguments(slow_tuning_rule="scale", slow_tuning_pull=0.5)
    _, callback, pulled = run(make_tiny_model(VOCAB), training_args(tmp_path / "a", 6), slowed)
    _, _, free = run(make_tiny_model(VOCAB), training_args(tmp_path / "b", 6), None)
    assert pulled.max_per_step[-1] < 0.7 * free.max_per_step[-1]
    # project with growth 2 over 2 epochs (4 steps each): budget doubles in epoch 1, end-of-epoch records logged
    slowed = SLowEDArguments(slow_tuning_rule="project", slow_tuning_budget=0.02, slow_tuning_budget_growth=2.0)
    args = training_args(tmp_path / "c", -1, num_train_epochs=2)
    trainer, callback, monitor = run(make_tiny_model(VOCAB), args, slowed)
    assert [h["budget"] for h in callback.history] == pytest.approx([0.02] * 4 + [0.04] * 4)
    assert max(monitor.max_per_step[:4]) <= 0.02 * (1 + 1e-4) < max(monitor.max_per_step[4:])
    assert max(monitor.max_per_step[4:]) <= 0.04 * (1 + 1e-4)
    assert [r["epoch"] for r in callback.epoch_records] == [0.0, 1.0]
    assert any("slow_tuning/epoch_drift_max" in e for e in trainer.state.log_history)
    # the plot helper turns these logs into per-epoch values and a PNG
    from trl_safedistill.methods.plots import per_epoch_summary, plot_slowed

    history = [dict(e, **{"entropy_mask/masked_fraction": 0.25}) for e in trainer.state.log_history if "loss" in e]
    summary = per_epoch_summary(history)
    assert sorted(summary) == [0, 1] and summary[1]["slow_tuning/budget"] == pytest.approx(0.04)
    assert summary[0]["masked_fraction"] == pytest.approx(0.25)
    png = plot_slowed(trainer.state.log_history, tmp_path / "slowed.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind", ["full", "lora", "lora_nonzero_init"])
def test_direction_rule_limits_only_the_undo_component(tmp_path, kind):
    from safetensors.torch import save_file

    from trl_safedistill.methods.slow_tuning import canonical_name

    model = {
        "full": lambda: make_tiny_model(VOCAB),
        "lora": lambda: lora_model(),
        "lora_nonzero_init": lambda: lora_model(init_lora_weights=False),
    }[kind]()
    w0 = IndependentDrift.effective(model)
    torch.manual_seed(3)
    d = {n: 0.01 * torch.randn_like(w) for n, w in w0.items()}  # alignment delta W0 - W_ref
    key = {n: canonical_name(n) + ("" if n.endswith(".weight") else ".weight") for n in w0}
    save_file({key[n]: (w0[n] - d[n]).contiguous() for n in w0}, str(tmp_path / "ref.safetensors"))
    undo: list[float] = []
    moved: list[float] = []

    class Undo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            now = IndependentDrift.effective(model)
            c = {n: float(((now[n] - w0[n]) * d[n]).sum() / d[n].norm()) for n in d}
            undo.append(max(max(0.0, -c[n]) / float(d[n].norm()) for n in d))
            moved.append(max(float((now[n] - w0[n]).norm() / d[n].norm()) for n in d))

    budget = 0.02
    slowed = SLowEDArguments(
        slow_tuning_rule="direction", slow_tuning_budget=budget, slow_tuning_reference=str(tmp_path / "ref.safetensors")
    )
    _, callback, _ = run(model, training_args(tmp_path / "out", 10), slowed, extra=[Undo()])
    assert max(undo) <= budget * (1 + 1e-4)
    assert callback.projections_total > 0
    assert max(moved) > 5 * budget  # ||W - W0|| / ||D||: the rest of the delta was not held to the budget


class ResumingTrainer(Trainer):
    """What SafeDistillTrainer does: hand the checkpoint to the callback when resuming."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, SlowTuningCallback):
                cb.load_anchor(resume_from_checkpoint)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_resume_reports_the_same_drift(tmp_path, kind):
    n = 8
    make = (lambda: make_tiny_model(VOCAB)) if kind == "full" else (lambda: lora_model(init_lora_weights=False))
    slowed = SLowEDArguments(slow_tuning_rule="project", slow_tuning_budget=BUDGET)
    save = dict(save_strategy="steps", save_steps=n // 2)
    trainer_cls = Trainer if kind == "full" else ResumingTrainer  # full: anchor found by on_train_begin itself

    _, whole, _ = run(make(), training_args(tmp_path / "whole", n, **save), slowed, trainer_cls)
    out = tmp_path / "split"
    _, first, _ = run(make(), training_args(out, n, **save), slowed, trainer_cls, extra=[StopAt(n // 2)])
    ckpt = out / f"checkpoint-{n // 2}"
    assert (ckpt / ANCHOR_FILE).is_file() and (ckpt / STATE_FILE).is_file()
    assert len(first.history) == n // 2
    # the resumed model starts from a different random init: the anchor must come from the checkpoint
    fresh = make_tiny_model(VOCAB, seed=7) if kind == "full" else lora_model(model=make_tiny_model(VOCAB, seed=7))
    if kind == "lora":  # LoRA checkpoints hold adapters only: the base must be the original one
        fresh = make()
    _, resumed, _ = run(fresh, training_args(out, n, **save), slowed, trainer_cls, resume=str(ckpt))

    key = ("step", "budget", "projections", "projections_total")
    assert [tuple(h[k] for k in key) for h in resumed.history] == [tuple(h[k] for k in key) for h in whole.history]
    assert [h["drift_max"] for h in resumed.history] == pytest.approx([h["drift_max"] for h in whole.history])
    assert [h["drift_mean"] for h in resumed.history] == pytest.approx([h["drift_mean"] for h in whole.history])
    lines = [json.loads(x) for x in (out / DRIFT_LOG_FILE).read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, n + 1))


def test_resume_without_anchor_is_refused(tmp_path):
    model = make_tiny_model(VOCAB)
    args = training_args(tmp_path, 4, save_strategy="steps", save_steps=2)
    run(model, args, None)  # checkpoints without slow tuning
    slowed = SLowEDArguments(slow_tuning_rule="project")
    with pytest.raises(RuntimeError, match="anchor"):
        run(make_tiny_model(VOCAB), training_args(tmp_path, 6), slowed, resume=os.path.join(tmp_path, "checkpoint-4"))
    with pytest.raises(FileNotFoundError):
        SlowTuningCallback(slowed).load_anchor(os.path.join(tmp_path, "checkpoint-4"))


def test_reference_unit_and_every_k_checks(tmp_path):
    from safetensors.torch import save_file

    model = make_tiny_model(VOCAB)
    torch.manual_seed(4)
    names = [n for n, p in model.named_parameters() if p.ndim >= 2]
    skipped = names[-1]  # absent from the reference: unconstrained with the default policy 'skip'
    reference = {n: (p.detach() - 0.05 * torch.randn_like(p)).contiguous() for n, p in model.named_parameters()}
    d_norm = {n: float((p.detach() - reference[n]).norm()) for n, p in model.named_parameters() if n in names}
    del reference[skipped]
    save_file(reference, str(tmp_path / "ref.safetensors"))
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = dict(model.named_parameters())
    seen: list[tuple[int, float]] = []

    class RefDrift(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            drift = max(float((params[n].detach() - w0[n]).norm()) / d_norm[n] for n in names if n != skipped)
            seen.append((state.global_step, drift))

    slowed = SLowEDArguments(
        slow_tuning_rule="project",
        slow_tuning_unit="reference",
        slow_tuning_budget=0.5,
        slow_tuning_reference=str(tmp_path / "ref.safetensors"),
        slow_tuning_check_every=3,
    )
    _, callback, _ = run(model, training_args(tmp_path / "out", 9), slowed, extra=[RefDrift()])
    checks = [h["step"] for h in callback.history]
    assert checks == [3, 4, 6, 8, 9]  # every 3 steps, and at each epoch end (4 steps per epoch)
    status = {u.name: u.status for u in callback.units}
    assert status[skipped] == "skip" and status[names[0]] == "constrained"
    at_checks = [d for step, d in seen if step % 3 == 0]  # the monitor runs in on_step_end, before on_epoch_end
    assert max(at_checks) <= 0.5 * (1 + 1e-4) and callback.projections_total > 0
    assert max(d for step, d in seen if step not in checks) > 0.5  # between checks the drift may exceed it
    assert float((params[skipped].detach() - w0[skipped]).norm()) / d_norm[skipped] > 0.5  # not capped at step 9


def test_batched_delta_norms_equal_brute_force():
    """delta_norms (one batched product per shape group) equals ||s·B·A||_F formed explicitly, per layer."""
    from trl_safedistill.methods.slow_tuning import _LoraUnit, delta_norms, discover_units

    model = lora_model(init_lora_weights=False)  # random A and B: every unit has a non-zero delta
    units, _ = discover_units(model)
    assert len({(tuple(u.A.shape), tuple(u.B.shape)) for u in units}) > 1  # several shape groups
    expected = []
    for u in units:
        assert isinstance(u, _LoraUnit) and not u.has_delta0
        expected.append(float((u.scaling * (u.B.detach().double() @ u.A.detach().double())).norm()))
    got = delta_norms(units)
    assert got == pytest.approx(expected, rel=1e-5)
    assert min(expected) > 0


def test_reference_location_paths_and_an_unreachable_hub_id(tmp_path, monkeypatch):
    from trl_safedistill.methods.slow_tuning import reference_location

    weights = tmp_path / "ref.safetensors"
    weights.write_bytes(b"")
    assert reference_location(str(weights)) == str(weights)
    assert reference_location(str(tmp_path)) == str(tmp_path)
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-model"):
        reference_location("no-such-org/no-such-model")


def _logged_steps(out) -> list[int]:
    return [json.loads(x)["step"] for x in (out / DRIFT_LOG_FILE).read_text().splitlines()]


def test_drift_log_is_per_run_fresh_runs_replace_it_and_a_resume_continues_it(tmp_path):
    """Rerunning into the same folder never appends a second run; resuming keeps each step exactly once."""
    slowed = SLowEDArguments(slow_tuning_rule="project", slow_tuning_budget=BUDGET)
    save = dict(save_strategy="steps", save_steps=2)
    run(make_tiny_model(VOCAB), training_args(tmp_path, 4, **save), slowed)
    first = (tmp_path / DRIFT_LOG_FILE).read_text().splitlines()
    _, second, _ = run(make_tiny_model(VOCAB, seed=3), training_args(tmp_path, 4, **save), slowed)  # fresh again
    assert _logged_steps(tmp_path) == [1, 2, 3, 4]  # one run, not 1..4 twice
    rows = [json.loads(x) for x in (tmp_path / DRIFT_LOG_FILE).read_text().splitlines()]
    assert [r["drift_max"] for r in rows] == pytest.approx([h["drift_max"] for h in second.history])
    assert (tmp_path / DRIFT_LOG_FILE).read_text().splitlines() != first  # the second run's rows, not the first's

    # resume the second run from its step-2 checkpoint: rows 3..4 are rewritten once, never duplicated
    _, resumed, _ = run(make_tiny_model(VOCAB, seed=3), training_args(tmp_path, 4, **save), slowed,
                        resume=str(tmp_path / "checkpoint-2"))
    assert _logged_steps(tmp_path) == [1, 2, 3, 4]
    resumed_rows = [json.loads(x) for x in (tmp_path / DRIFT_LOG_FILE).read_text().splitlines()]
    assert resumed_rows[:2] == rows[:2]  # kept from the checkpoint's run
    assert [r["drift_max"] for r in resumed_rows] == pytest.approx([h["drift_max"] for h in resumed.history])


def test_drift_log_resume_of_a_mixed_legacy_log_keeps_only_the_last_run(tmp_path):
    """A log written before the per-run rule (two runs appended) is cut to the last run's rows up to the step."""
    from trl_safedistill.methods.slow_tuning import log as drift_log

    rows = [{"step": s, "run": "old"} for s in (1, 2, 3, 4)] + [{"step": s, "run": "new"} for s in (1, 2, 3)]
    (tmp_path / DRIFT_LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    drift_log.resume(str(tmp_path), str(tmp_path / "checkpoint-2"), 2)
    kept = [json.loads(x) for x in (tmp_path / DRIFT_LOG_FILE).read_text().splitlines()]
    assert kept == [{"step": 1, "run": "new"}, {"step": 2, "run": "new"}]
    # resuming into another folder takes the rows from the log beside the checkpoint, never mixing the two
    other = tmp_path / "other"
    other.mkdir()
    (other / DRIFT_LOG_FILE).write_text(json.dumps({"step": 9, "run": "unrelated"}) + "\n")
    drift_log.resume(str(other), str(tmp_path / "checkpoint-2"), 1)
    assert [json.loads(x) for x in (other / DRIFT_LOG_FILE).read_text().splitlines()] == [{"step": 1, "run": "new"}]


@pytest.mark.parametrize("rule", ["project", "scale", "direction"])
def test_a_reference_unit_without_a_reference_is_refused_at_configuration(rule):
    """``scale`` with ``slow_tuning_unit: reference`` used to pass validation and crash later with a TypeError."""
    from trl_safedistill.config import SafeDistillConfig

    with pytest.raises(ValueError, match="needs slow_tuning_reference"):
        SafeDistillConfig("out", slow_tuning_rule=rule, slow_tuning_unit="reference", report_to="none")


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_scale_rule_keeps_the_budget(tmp_path, kind):
    """``scale`` pulls by ``slow_tuning_pull`` and, like every rule, never leaves the budget (it used to ignore it)."""
    make = (lambda: make_tiny_model(VOCAB)) if kind == "full" else lora_model
    capped = SLowEDArguments(slow_tuning_rule="scale", slow_tuning_pull=0.01, slow_tuning_budget=BUDGET)
    _, callback, monitor = run(make(), training_args(tmp_path / "capped", 15), capped)
    assert max(monitor.max_per_step) <= BUDGET * (1 + 1e-4)
    assert max(monitor.max_per_step) >= BUDGET * 0.99  # the budget bit
    assert [h["drift_max"] for h in callback.history] == pytest.approx(monitor.max_per_step, rel=1e-3)
    # the pull alone (a budget that never binds) leaves the budget in the same run: the cap is what holds it
    pull_only = SLowEDArguments(slow_tuning_rule="scale", slow_tuning_pull=0.01, slow_tuning_budget=1e9)
    _, _, free = run(make(), training_args(tmp_path / "pull", 15), pull_only)
    assert max(free.max_per_step) > 2 * BUDGET
