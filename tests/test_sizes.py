"""``demo --set FIELD=VALUE``: strict, typed, range-checked overrides of a run size, one-line errors.

Before, any boolean other than 1/true/yes/on became False (``gate_enforced=ture`` silently switched the safety gate
off, ``use_peft=flase`` switched to full fine-tuning), nonsense numbers were accepted, and ``distil_steps=abc`` failed
without naming the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import pytest

from trl_safedistill.experiments.sizes import FIXED, SIZES, RunSize, SizeError, check_size, get_size, parse_set

BAD = [
    ("gate_enforced", "ture", "one of true/false"),
    ("use_peft", "flase", "one of true/false"),
    ("distil_steps", "-5", "an integer >= 1"),
    ("distil_lr", "nan", "a number in (0, 1)"),
    ("eval_workers", "0", "an integer >= 1"),
    ("gate_min_refusal", "85", "a number in [0, 1] (a fraction: 0.85 means 85%)"),
    ("distil_steps", "abc", "an integer >= 1"),
    ("distil_lr", "inf", "a number in (0, 1)"),
    ("lower_lrs", "1e-4,,5e-5", "comma-separated numbers"),
    ("lower_lrs", "1e-4,2", "each in (0, 1)"),
    ("refusal_mix_fraction", "-0.1", "[0, 1)"),
    ("model", "", "a non-empty string"),
]


@pytest.mark.parametrize(("key", "value", "allowed"), BAD)
def test_a_bad_value_is_an_error_naming_field_value_and_what_is_allowed(key, value, allowed):
    with pytest.raises(SizeError) as caught:
        get_size("default", {key: value})
    message = str(caught.value)
    assert message.startswith(f"--set {key}={value}: {key} must be ")
    assert allowed in message and "\n" not in message


def test_demo_command_exits_2_with_one_line_for_a_typo_in_a_boolean():
    env = {k: v for k, v in os.environ.items()}
    result = subprocess.run([sys.executable, "-m", "trl_safedistill.cli", "demo", "--size", "tiny", "--set",
                             "gate_enforced=ture", "--output-dir", "/nonexistent/never-created"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "trl-safedistill demo: --set gate_enforced=ture: gate_enforced must be one of true/false, yes/no, t/f, y/n, 1/0"]
    assert result.stdout == ""


def test_set_syntax_and_unknown_fields():
    assert parse_set(["distil_steps=8", " use_peft = no ", "distil_steps=9", "lower_lrs="]) == {
        "distil_steps": "9", "use_peft": "no", "lower_lrs": ""}
    with pytest.raises(SizeError, match="--set needs FIELD=VALUE, got 'distil_steps'"):
        parse_set(["distil_steps"])
    with pytest.raises(SizeError, match="unknown size field; did you mean 'distil_steps'"):
        get_size("tiny", {"distl_steps": "3"})
    for fixed in FIXED:
        with pytest.raises(SizeError, match="unknown size field"):
            get_size("tiny", {fixed: "x"})
    with pytest.raises(SizeError, match="unknown size 'huge'"):
        get_size("huge")


def test_good_values_parse_to_the_field_types():
    size = get_size("default", {"gate_enforced": "no", "use_peft": "True", "bf16": "1", "load_in_4bit": "f",
                                "distil_steps": " 8", "distil_lr": "1e-4", "lower_lrs": "1e-4, 5e-5",
                                "model": "org/model", "gate_min_refusal": "0.9", "lora_dropout": "0"})
    assert size.gate_enforced is False and size.use_peft is True and size.bf16 is True and size.load_in_4bit is False
    assert size.distil_steps == 8 and type(size.distil_steps) is int
    assert size.distil_lr == 1e-4 and size.lower_lrs == (1e-4, 5e-5) and type(size.lower_lrs) is tuple
    assert size.lora_dropout == 0.0 and type(size.lora_dropout) is float and size.gate_min_refusal == 0.9
    assert size.model == "org/model"
    assert get_size("tiny", {"lower_lrs": ""}).lower_lrs == ()  # no lower-rate controls
    # typed values (the Python API) go through the same parser
    assert get_size("tiny", {"eval_workers": 2, "gate_enforced": True, "lower_lrs": [1e-3]}).eval_workers == 2
    with pytest.raises(SizeError, match="eval_workers must be an integer >= 1"):
        get_size("tiny", {"eval_workers": 0})


@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_preset_value_reads_back_through_set_unchanged(name):
    """Each preset is in range, and each of its values given as ``--set`` text parses to the same value and type."""
    preset = SIZES[name]
    assert check_size(preset) == []
    for spec in dataclasses.fields(RunSize):
        if spec.name in FIXED:
            continue
        value = getattr(preset, spec.name)
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, tuple):
            text = ",".join(repr(v) for v in value)
        else:
            text = str(value)
        parsed = getattr(get_size(name, {spec.name: text}), spec.name)
        assert parsed == value and type(parsed) is type(value), (spec.name, text, parsed)


def test_presets_are_unchanged():
    """The demo's numbers depend on these values: a change must be deliberate (then update the digest)."""
    presets = json.dumps({name: size.to_dict() for name, size in SIZES.items()}, sort_keys=True)
    assert hashlib.sha256(presets.encode()).hexdigest() == PRESETS_SHA256


PRESETS_SHA256 = "0eba95b72c6c2ee4da34116e5f316cb35ea823b4404862b4807d30b32789990d"


def test_bf16_warning_only_on_a_cpu_without_native_bf16(tmp_path):
    """A bf16 CPU size (the evidence size with bf16 on) warns on an AVX2-only CPU, not on an avx512_bf16 or AMX one,
    on CUDA, for a float32 size, or where the flags cannot be read."""
    from trl_safedistill.experiments.training import bf16_speed_warning, cpu_flags

    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n")
    sapphire = tmp_path / "sapphire"
    sapphire.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    evidence, default = get_size("evidence", {"bf16": "true"}), get_size("default")
    assert evidence.bf16 and not default.bf16 and not get_size("evidence").bf16
    warning = bf16_speed_warning(evidence, cuda=False, flags=cpu_flags(avx2))
    assert warning and "'evidence' runs in bf16" in warning and "--set bf16=false" in warning
    assert bf16_speed_warning(evidence, cuda=False, flags=cpu_flags(sapphire)) is None
    assert bf16_speed_warning(evidence, cuda=True, flags=cpu_flags(avx2)) is None
    assert bf16_speed_warning(default, cuda=False, flags=cpu_flags(avx2)) is None
    assert cpu_flags(tmp_path / "missing") is None
    assert bf16_speed_warning(evidence, cuda=False, flags=None) is None
