"""Run sizes of ``trl-safedistill demo --size``: one dataclass of every knob, four presets.

* ``tiny``: a 2-layer random Llama built from a config with the embedded tokenizer, a handful of steps
  and items; what CI runs (the numbers mean nothing, the artefacts are real). The gate is not
  enforced (a random model cannot refuse).
* ``default``: the embedded default (SmolLM2-135M-Instruct), LoRA, sized for <= 30 minutes on two quiet
  CPU cores (see the README's Results section for the measured wall time).
* ``longer``: the same model with more steps and evaluation items (about 4x the time).
* ``gpu``: a paper student (Qwen2.5-1.5B-Instruct) in 4-bit NF4 QLoRA, bf16, on one CUDA GPU.

Every preset can be overridden field by field (``trl-safedistill demo --set distil_steps=8``). The values are parsed by
transformers' ``HfArgumentParser`` over :class:`RunSize`, so each is read as its field's type: booleans only as
``true/false``, ``yes/no``, ``t/f``, ``y/n`` or ``1/0`` (a typo is an error, never ``False``), integers, numbers, and
``lower_lrs`` as comma-separated numbers (``lower_lrs=1e-4,5e-5``; empty: no lower-rate controls). Each numeric field
declares its allowed range next to it (``metadata={BOUNDS: ...}``), checked in one place (:func:`check_value`):
counts and steps >= 1, learning rates in (0, 1), rates and fractions in [0, 1], ``eval_workers`` >= 1. A bad value
stops the command with one line naming the field, the value and what is allowed (:class:`SizeError`, exit status 2).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: ``field(metadata=...)`` key of a numeric field's :class:`Bounds`
BOUNDS = "bounds"


@dataclass(frozen=True)
class Bounds:
    """The allowed range of a numeric field (``None``: unbounded on that side); every number must be finite.

    ``fraction``: the value is a share in [0, 1], so the error message says that 85% is written ``0.85``.
    """

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    fraction: bool = False

    def admits(self, value: Any) -> bool:
        """Whether ``value`` (a number, or every number of a tuple) lies in the range."""
        for number in value if isinstance(value, tuple) else (value,):
            if isinstance(number, float) and not math.isfinite(number):
                return False
            if self.low is not None and (number <= self.low if self.open_low else number < self.low):
                return False
            if self.high is not None and (number >= self.high if self.open_high else number > self.high):
                return False
        return True

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        text = f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        return text + (" (a fraction: 0.85 means 85%)" if self.fraction else "")


AT_LEAST_1 = MappingProxyType({BOUNDS: Bounds(low=1)})  # steps, batch sizes, item counts, workers
AT_LEAST_0 = MappingProxyType({BOUNDS: Bounds(low=0)})  # counts where 0 means "none" or "all"
LEARNING_RATE = MappingProxyType({BOUNDS: Bounds(low=0, high=1, open_low=True, open_high=True)})
FRACTION = MappingProxyType({BOUNDS: Bounds(low=0, high=1, fraction=True)})
FRACTION_BELOW_1 = MappingProxyType({BOUNDS: Bounds(low=0, high=1, open_high=True, fraction=True)})


@dataclass(frozen=True)
class RunSize:
    """Every size-dependent setting of the demo."""

    name: str
    model: str = "embedded-default"  # a model name/path, or "tiny-random"
    load_in_4bit: bool = False
    use_peft: bool = True
    lora_r: int = field(default=16, metadata=AT_LEAST_1)
    lora_alpha: int = field(default=32, metadata=AT_LEAST_1)
    lora_dropout: float = field(default=0.0, metadata=FRACTION_BELOW_1)  # 0.05 cost 20-25% of a CPU step (Bernoulli masks on every LoRA input) for 10-30 steps
    # ---- alignment (stage 2)
    align_steps: int = field(default=20, metadata=AT_LEAST_1)
    align_batch: int = field(default=8, metadata=AT_LEAST_1)
    align_lr: float = field(default=3e-4, metadata=LEARNING_RATE)
    align_max_length: int = field(default=160, metadata=AT_LEAST_1)
    align_harmful: int = field(default=240, metadata=AT_LEAST_1)  # refusal examples (templated answers to the AdvBench "align" split)
    align_benign: int = field(default=240, metadata=AT_LEAST_0)  # helpful answers: this project's short Q&A and self-answered look-alikes/imperatives
    gate_min_refusal: float = field(default=0.85, metadata=FRACTION)  # of the calibration harmful prompts (protocol)
    gate_max_over_refusal: float = field(default=0.20, metadata=FRACTION)  # of the calibration benign prompts, and of the look-alikes alone
    gate_enforced: bool = False  # False: a missed gate is reported at the top of the report and the run goes on
    n_gate: int = field(default=16, metadata=AT_LEAST_0)  # prompts per calibration task of the gate (0: all)
    align_answer_tokens: int = field(default=96, metadata=AT_LEAST_1)  # the base model's answers to the benign align prompts
    # ---- distillation (stage 3)
    distil_steps: int = field(default=10, metadata=AT_LEAST_1)
    distil_batch: int = field(default=4, metadata=AT_LEAST_1)
    distil_lr: float = field(default=5e-4, metadata=LEARNING_RATE)
    full_ft_lr: float = field(default=5e-5, metadata=LEARNING_RATE)
    lower_lrs: tuple[float, ...] = field(default=(1.5e-4, 5e-5), metadata=LEARNING_RATE)
    max_length: int = field(default=256, metadata=AT_LEAST_1)  # training records longer than this (standard format) are left out, not cut
    max_train_records: int = field(default=0, metadata=AT_LEAST_0)  # 0: every record that fits max_length; else the first N (task round-robin order)
    # refusal examples' share of the standard_refusal_mix data: the version-2 equal-effort sweep's choice (of 2.5, 5,
    # 10, 20%; none kept the calibration refusal, 10% had the best balance; README "Equal tuning effort")
    refusal_mix_fraction: float = field(default=0.1, metadata=FRACTION_BELOW_1)
    keep_checkpoints: bool = False  # keep every curve checkpoint (the evidence run evaluates early-stopped standard CoT)
    curve_every: int = field(default=5, metadata=AT_LEAST_1)  # curve points (and checkpoints) every k optimizer steps, plus step 0 and the last
    seed: int = field(default=42, metadata=AT_LEAST_0)
    # ---- evaluation (stage 4)
    n_safety: int = field(default=16, metadata=AT_LEAST_0)  # prompts per protocol test task (7 tasks: 4 harmful, 3 benign; 0: all)
    n_ind_mc: int = field(default=16, metadata=AT_LEAST_0)  # IND multiple-choice items (0: not measured)
    n_ind_gen: int = field(default=0, metadata=AT_LEAST_0)  # exact match needs whole rationales (>= 128 tokens): the longer sizes measure it
    ind_gen_by_seed: bool = False  # each seed generates its own n_ind_gen test items (eval_stage.seed_items): seeds 0, 1, 2 disjoint
    n_ood_mc: int = field(default=16, metadata=AT_LEAST_1)
    n_ood_gen: int = field(default=0, metadata=AT_LEAST_0)
    n_nll: int = field(default=48, metadata=AT_LEAST_0)  # test rationales of the held-out NLL (0: all that fit)
    nll_max_length: int = field(default=0, metadata=AT_LEAST_0)  # test rationales must fit this many tokens (0: max_length)
    safety_gen_tokens: int = field(default=64, metadata=AT_LEAST_1)  # the judge reads the first 48 words (about 64 tokens)
    reasoning_gen_tokens: int = field(default=64, metadata=AT_LEAST_1)
    eval_batch: int = field(default=72, metadata=AT_LEAST_1)
    eval_workers: int = field(default=2, metadata=AT_LEAST_1)  # evaluation processes on a CPU, threads shared out (pipeline.parallel); 1 on a GPU
    curve_n_harmful: int = field(default=16, metadata=AT_LEAST_1)  # calibration harmful prompts, and as many look-alikes, per curve point
    curve_n_ind: int = field(default=8, metadata=AT_LEAST_1)
    curve_n_loss: int = field(default=8, metadata=AT_LEAST_1)
    bootstrap_iters: int = field(default=1000, metadata=AT_LEAST_1)
    bf16: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> RunSize:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lower_lrs"] = list(self.lower_lrs)
        return data


SIZES: dict[str, RunSize] = {
    "tiny": RunSize(
        name="tiny",
        model="tiny-random",
        lora_r=4,
        lora_alpha=8,
        align_steps=4,
        align_batch=4,
        align_lr=5e-3,
        align_max_length=96,
        align_harmful=16,
        align_benign=8,
        gate_enforced=False,
        distil_steps=4,
        distil_batch=2,
        distil_lr=5e-3,
        full_ft_lr=1e-3,
        lower_lrs=(1e-3, 2e-4),
        max_length=256,
        max_train_records=24,
        curve_every=2,
        n_safety=2,
        n_gate=2,
        n_nll=2,
        align_answer_tokens=4,
        n_ind_mc=2,
        n_ind_gen=1,
        n_ood_mc=2,
        n_ood_gen=0,
        safety_gen_tokens=4,
        reasoning_gen_tokens=4,
        eval_batch=4,
        eval_workers=1,
        curve_n_harmful=2,
        curve_n_ind=2,
        curve_n_loss=2,
        bootstrap_iters=50,
    ),
    # The default demo: the field defaults, one curve point per student (step 10, the last; beside step 0) so that
    # `make demo` keeps its 30-minute budget on a 2-core CPU (each intermediate point cost ~40 s per student).
    "default": RunSize(name="default", curve_every=10),
    "longer": RunSize(
        name="longer",
        align_steps=50,
        distil_steps=75,
        distil_batch=8,
        distil_lr=2e-4,
        lower_lrs=(6e-5, 2e-5),
        max_length=384,
        curve_every=15,
        n_safety=64,
        n_gate=32,
        n_nll=0,
        n_ind_mc=300,
        n_ind_gen=100,
        n_ood_mc=200,
        n_ood_gen=50,
        reasoning_gen_tokens=128,
        curve_n_harmful=64,
        curve_n_ind=96,
        curve_n_loss=48,
    ),
    # The evidence run (python -m trl_safedistill.experiments.evidence): the embedded default, units of (seed, model)
    # committed as each finishes. Cut toward issue 16's budget (about 2 hours for 3 seeds on two CPU cores), which it
    # does not meet: the standard-CoT units alone take about 1.5 hours per seed on an AVX2 machine (README, Results).
    # 24 distillation steps, no IND multiple choice (at chance for every model in the first unit), 40 prompts per
    # safety set. float32 from data version 2: bf16 ran 2.0-2.3x faster on an avx512_bf16 CPU but about 4x
    # slower on an AVX2 one, float32 at the same speed on both, and a run's units must share one dtype wherever they
    # run (data version 1's units are bf16).
    "evidence": RunSize(
        name="evidence",
        align_steps=40,
        align_harmful=480,
        align_benign=480,
        distil_steps=24,
        distil_batch=8,
        distil_lr=5e-4,
        lower_lrs=(2.5e-4, 1.25e-4, 6e-5, 3e-5),
        keep_checkpoints=True,
        curve_every=8,  # early-stop checkpoints at steps 8 and 16
        n_safety=40,
        n_gate=32,
        n_ind_mc=0,
        n_ind_gen=100,  # per seed, each seed its own 100 (ind_gen_by_seed): 300 distinct items over seeds 0-2
        ind_gen_by_seed=True,
        n_ood_mc=100,
        n_nll=200,
        nll_max_length=512,  # at 256 only 87 test rationales fit; at 512 nearly all do
        reasoning_gen_tokens=192,
        curve_n_harmful=16,
        curve_n_ind=24,
        curve_n_loss=24,
    ),
    "gpu": RunSize(
        name="gpu",
        model="Qwen/Qwen2.5-1.5B-Instruct",
        load_in_4bit=True,
        bf16=True,
        lora_dropout=0.05,  # the QLoRA recipes' value: on a GPU the masks are cheap
        align_steps=60,
        distil_steps=150,
        distil_batch=16,
        distil_lr=2e-4,
        lower_lrs=(6e-5, 2e-5),
        max_length=512,
        curve_every=25,
        n_safety=0,
        n_gate=0,
        n_nll=0,
        n_ind_mc=466,
        n_ind_gen=200,
        n_ood_mc=400,
        n_ood_gen=100,
        safety_gen_tokens=64,
        reasoning_gen_tokens=256,
        eval_batch=32,
        curve_n_harmful=96,
        curve_n_ind=128,
        curve_n_loss=64,
    ),
}


#: fields ``--set`` cannot change: the preset's name, and the free-form ``extra`` dict
FIXED = ("name", "extra")


class SizeError(ValueError):
    """A ``--set`` override that names no field or holds a value its field does not allow (one line)."""


def parse_set(items: Iterable[str]) -> dict[str, str]:
    """``["distil_steps=8", ...]`` (repeated ``--set`` flags) -> ``{"distil_steps": "8"}``; the last of a field wins."""
    overrides: dict[str, str] = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise SizeError(f"--set needs FIELD=VALUE, got '{item}'")
        overrides[key.strip()] = value.strip()
    return overrides


def get_size(name: str, overrides: dict[str, Any] | None = None) -> RunSize:
    """The preset ``name`` with ``overrides`` applied, each parsed as its field's type and range-checked.

    Values may be strings (``--set``) or already typed (``{"eval_workers": 2}``); both go through the same parser.
    Raises :class:`SizeError` naming the field, the value and what is allowed.
    """
    if name not in SIZES:
        raise SizeError(f"unknown size '{name}'; choose one of {sorted(SIZES)}")
    size = SIZES[name]
    if not overrides:
        return size
    settable = {f.name: f for f in dataclasses.fields(RunSize) if f.name not in FIXED}
    parser = _set_parser()
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in settable:
            close = difflib.get_close_matches(key, settable, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SizeError(f"--set {key}: unknown size field; {hint}known: {sorted(settable)}")
        text = _as_text(value)
        try:
            parsed = getattr(parser.parse_args([f"--{key}={text}"]), key)
        except _ParseError:
            parsed = None
        if parsed is None or not check_value(settable[key], parsed):
            raise SizeError(f"--set {key}={text}: {key} must be {expected(settable[key])}")
        changes[key] = parsed
    return size.replace(**changes)


def check_value(spec: dataclasses.Field, value: Any) -> bool:
    """Whether ``value`` is allowed in the field ``spec``: within its declared :class:`Bounds`; a name not empty."""
    bounds = spec.metadata.get(BOUNDS)
    if bounds is not None:
        return bounds.admits(value)
    return not isinstance(value, str) or bool(value.strip())


def check_size(size: RunSize) -> list[str]:
    """The fields of ``size`` whose values their declared ranges do not allow (empty: all fine)."""
    return [f.name for f in dataclasses.fields(RunSize) if f.name not in FIXED and not check_value(f, getattr(size, f.name))]


def expected(spec: dataclasses.Field) -> str:
    """What a field takes, in words: ``an integer >= 1``, ``one of true/false, ...``, ``a number in (0, 1)``."""
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", str(spec.type))
    bounds = spec.metadata.get(BOUNDS)
    if kind == "bool":
        return "one of true/false, yes/no, t/f, y/n, 1/0"
    if kind.startswith("tuple"):
        return f"comma-separated numbers (e.g. 1e-4,5e-5; empty for none), each {bounds}"
    if kind == "int":
        return f"an integer {bounds}" if bounds else "an integer"
    if kind == "float":
        return f"a number {bounds}" if bounds else "a number"
    return "a non-empty string"


class _ParseError(Exception):
    pass


def _as_text(value: Any) -> str:
    """A typed override as the text ``--set`` would give (so one parser checks both)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(repr(float(v)) for v in value)
    return repr(value)


def _floats(text: str) -> tuple[float, ...]:
    """``"1e-4, 5e-5"`` -> ``(1e-4, 5e-5)``; ``""`` -> ``()``; an empty or non-numeric item is an error."""
    return tuple(float(part) for part in text.split(",")) if text.strip() else ()


def _set_parser():
    """transformers' ``HfArgumentParser`` over :class:`RunSize`: one ``--FIELD`` option per settable field, typed
    (strict booleans via ``string_to_bool``), ``lower_lrs`` through :func:`_floats`; errors raise instead of exiting."""
    from typing import get_type_hints

    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def _add_dataclass_arguments(self, dtype):
            hints = get_type_hints(dtype)
            for spec in dataclasses.fields(dtype):
                if spec.name in FIXED:
                    continue
                spec = copy.copy(spec)  # RunSize's own fields stay untouched
                spec.type = hints[spec.name]
                spec.metadata = MappingProxyType({k: v for k, v in spec.metadata.items() if k != BOUNDS})
                if getattr(spec.type, "__origin__", None) is tuple:
                    self.add_argument(f"--{spec.name}", type=_floats, default=spec.default)
                else:
                    self._parse_dataclass_field(self, spec)

        def error(self, message):
            raise _ParseError(message)

    return Parser(RunSize, add_help=False)
