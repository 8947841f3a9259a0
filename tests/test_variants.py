"""The demo's methods (:mod:`trl_safedistill.experiments.variants`): the default list, and the opt-in methods trained
only when named (the SLowED ablation, Safe LoRA, AsFT), their configs and the pre-alignment placeholder.

The tiny pipeline that trains the opt-in methods is in tests/test_equal_effort.py (one start for both)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trl_safedistill.config import SafeDistillConfig
from trl_safedistill.experiments import evidence
from trl_safedistill.experiments.demo_pipeline import DemoPipeline
from trl_safedistill.experiments.sizes import get_size
from trl_safedistill.experiments.variants import (
    PRE_ALIGNMENT,
    REFERENCE_FIELDS,
    SLOWED_DEFAULTS,
    Method,
    methods_for,
    opt_in_methods,
)

OPT_IN = ["cascade_slowed", "slowed_mask_only", "slowed_slow_only", "direction", "safe_lora", "asft"]
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def build_config(method: Method, output_dir: Path) -> SafeDistillConfig:
    """The SafeDistillConfig the demo's training stage builds from a method (its fields; validation included)."""
    return SafeDistillConfig(output_dir=str(output_dir), use_cpu=True, report_to="none", **method.config)


def test_the_default_method_list_is_unchanged():
    size = get_size("default")
    assert [m.name for m in methods_for(size)] == ["standard", "slowed", "cascade", "answer_first",
                                                   "standard_lr1.5e-4", "standard_lr5e-5", "standard_refusal_mix"]
    # a run without --methods trains none of the opt-in methods
    pipeline = DemoPipeline(get_size("tiny"), Path("/nonexistent/run"), quiet=True)
    assert not {m.name for m in pipeline.methods} & set(OPT_IN)
    named = DemoPipeline(get_size("tiny"), Path("/nonexistent/run"), quiet=True, method_names=["standard", *OPT_IN])
    assert [m.name for m in named.methods] == ["standard", *OPT_IN]


@pytest.mark.parametrize("name", OPT_IN)
def test_each_opt_in_method_builds_a_valid_config_once_resolved(name, tmp_path):
    method = next(m for m in opt_in_methods(get_size("tiny")) if m.name == name)
    resolved = method.resolved("/models/pre-alignment")
    assert PRE_ALIGNMENT not in resolved.config.values()
    config = build_config(resolved, tmp_path)
    assert config.distill_format == ("cascade" if name == "cascade_slowed" else "standard")
    assert config.learning_rate == get_size("tiny").distil_lr
    if name == "safe_lora":
        assert config.safe_lora and config.safe_lora_reference == "/models/pre-alignment"
        assert not config.asft and config.slow_tuning_rule == "off" and config.entropy_mask_mode == "off"
    if name == "asft":
        assert config.asft and config.asft_reference == "/models/pre-alignment" and not config.safe_lora
    if name == "direction":  # the direction rule alone: no masking, no other baseline
        assert config.slow_tuning_rule == "direction" and config.slow_tuning_reference == "/models/pre-alignment"
        assert config.entropy_mask_mode == "off" and not config.safe_lora and not config.asft
    # unresolved, a placeholder is not a reference a run could use; the family is one the evidence report knows
    assert evidence.FAMILY[method.family] == method.family


def test_the_ablation_switches_exactly_one_slowed_module_off(tmp_path):
    methods = {m.name: m for m in opt_in_methods(get_size("tiny"))}
    mask_only, slow_only = methods["slowed_mask_only"].config, methods["slowed_slow_only"].config
    # masking alone: SLOWED_DEFAULTS' masking fields, slow tuning off and no reference to load
    assert {k: mask_only[k] for k in SLOWED_DEFAULTS if k.startswith("entropy_mask_")} == \
        {k: v for k, v in SLOWED_DEFAULTS.items() if k.startswith("entropy_mask_")}
    assert mask_only["slow_tuning_rule"] == "off" and "slow_tuning_reference" not in mask_only
    # slow tuning alone: SLOWED_DEFAULTS' slow-tuning fields (rule, budget, reference), masking off
    assert {k: slow_only[k] for k in SLOWED_DEFAULTS if k.startswith("slow_tuning_")} == \
        {k: v for k, v in SLOWED_DEFAULTS.items() if k.startswith("slow_tuning_")}
    assert slow_only["entropy_mask_mode"] == "off"
    built = build_config(methods["slowed_slow_only"].resolved("/models/base"), tmp_path)
    assert built.slow_tuning_rule == SLOWED_DEFAULTS["slow_tuning_rule"] and built.slow_tuning_reference == "/models/base"
    # and from other SLowED settings (a run's --slowed override), the same split
    custom = {"entropy_mask_mode": "threshold", "entropy_mask_threshold": 0.3, "slow_tuning_rule": "project",
              "slow_tuning_budget": 0.1}
    again = {m.name: m.config for m in opt_in_methods(get_size("tiny"), custom)}
    assert again["slowed_mask_only"]["entropy_mask_threshold"] == 0.3 and again["slowed_mask_only"]["slow_tuning_rule"] == "off"
    assert again["slowed_slow_only"]["slow_tuning_budget"] == 0.1 and again["slowed_slow_only"]["entropy_mask_mode"] == "off"


def test_resolved_replaces_every_reference_placeholder():
    config = {key: PRE_ALIGNMENT for key in REFERENCE_FIELDS} | {"slow_tuning_rule": "direction"}
    resolved = Method("m", "m", config).resolved("/models/base")
    assert {key: resolved.config[key] for key in REFERENCE_FIELDS} == dict.fromkeys(REFERENCE_FIELDS, "/models/base")
    assert resolved.config["slow_tuning_rule"] == "direction"
    # only the placeholder is replaced: a path a user gave stays, and a method without a placeholder is returned as is
    mixed = Method("m", "m", {"safe_lora_reference": "/mine", "asft_reference": PRE_ALIGNMENT}).resolved("/models/base")
    assert mixed.config == {"safe_lora_reference": "/mine", "asft_reference": "/models/base"}
    plain = Method("p", "p", {"learning_rate": 1e-4})
    assert plain.resolved("/models/base") is plain


def test_every_method_family_is_in_the_metrics_schema():
    schema = json.loads((Path(__file__).resolve().parents[1] / "trl_safedistill/experiments/schema.json").read_text())
    families = schema["properties"]["models"]["items"]["properties"]["family"]["enum"]
    size = get_size("tiny")
    assert {m.family for m in methods_for(size) + opt_in_methods(size)} <= set(families)


@pytest.mark.parametrize("student", ["embedded-default", "qwen2.5-1.5b-instruct", "llama-3.2-1b-instruct", "bloomz-1b1"])
def test_every_slowed_recipe_ships_the_slowed_defaults(student):
    """recipes/<student>/slowed.yaml carries SLOWED_DEFAULTS' masking and slow-tuning fields (the reference names that
    student's own pre-alignment weights), so a change of the calibrated defaults cannot leave a recipe behind."""
    import yaml

    recipe = yaml.safe_load((RECIPES / student / "slowed.yaml").read_text())
    shipped = {k: v for k, v in recipe.items() if k.startswith(("entropy_mask_", "slow_tuning_"))}
    shipped.pop("slow_tuning_direction_dtype", None)  # a memory setting of the bf16 students, not a calibrated one
    expected = {k: v for k, v in SLOWED_DEFAULTS.items() if v != PRE_ALIGNMENT}
    assert {k: v for k, v in shipped.items() if k != "slow_tuning_reference"} == expected
    assert ("slow_tuning_reference" in shipped) == (SLOWED_DEFAULTS.get("slow_tuning_reference") == PRE_ALIGNMENT)


@pytest.mark.parametrize("recipe_name, build", [("ablation_masking_only", "masking_only"),
                                                 ("ablation_slow_tuning_only", "slow_tuning_only")])
def test_the_ablation_recipes_switch_off_one_module_of_the_slowed_defaults(recipe_name, build, tmp_path):
    """Each embedded-default ablation recipe, read as SafeDistillConfig, equals the demo's ablation method built from
    SLOWED_DEFAULTS on every masking and slow-tuning field (the reference aside)."""
    import yaml

    from trl_safedistill.experiments import variants

    recipe = yaml.safe_load((RECIPES / "embedded-default" / f"{recipe_name}.yaml").read_text())
    fields = {k: v for k, v in recipe.items() if k.startswith(("entropy_mask_", "slow_tuning_"))}
    method = getattr(variants, build)(SLOWED_DEFAULTS)
    from_recipe = build_config(Method("r", "r", {**fields, "slow_tuning_reference": "/ref"} if "slow_tuning_reference" in fields
                                      else fields), tmp_path)
    from_method = build_config(Method("m", "m", {k: "/ref" if v == PRE_ALIGNMENT else v for k, v in method.items()}), tmp_path)
    names = [k for k in vars(from_method) if k.startswith(("entropy_mask_", "slow_tuning_")) and k != "slow_tuning_reference"]
    assert {k: getattr(from_recipe, k) for k in names} == {k: getattr(from_method, k) for k in names}


#: The version-2 equal-effort calibration sweep (issue 17): its ``chosen`` settings are what the package ships.
EQUAL_EFFORT_SWEEP = Path(__file__).resolve().parents[1] / "results" / "evidence-v2" / "equal-effort" / "sweep.json"
CALIBRATED_PREFIXES = ("entropy_mask_", "slow_tuning_", "safe_lora", "asft")


def _calibrated_fields(config: SafeDistillConfig) -> dict:
    """The config's masking, slow-tuning, Safe LoRA and AsFT fields, without those of a module that is off (a
    quantile with masking off changes nothing, so it is not a difference)."""
    fields = {k: v for k, v in vars(config).items() if k.startswith(CALIBRATED_PREFIXES)}
    inactive = [prefix for prefix, on in (("entropy_mask_", config.entropy_mask_mode != "off"),
                                          ("slow_tuning_", config.slow_tuning_rule != "off"),
                                          ("safe_lora_", config.safe_lora), ("asft_", config.asft)) if not on]
    return {k: v for k, v in fields.items()
            if not k.startswith(tuple(inactive)) or k in ("entropy_mask_mode", "slow_tuning_rule")}


@pytest.mark.parametrize("family", ["slowed", "direction", "safe_lora", "asft", "refusal_mix"])
def test_the_shipped_settings_are_the_equal_effort_sweeps_choice(family, tmp_path):
    """SLOWED_DEFAULTS, DIRECTION_SETTINGS, SAFE_LORA_SETTINGS, ASFT_SETTINGS and the refusal-mix fraction equal what
    the committed equal-effort sweep chose for that family (read as SafeDistillConfig, references resolved alike)."""
    choice = json.loads(EQUAL_EFFORT_SWEEP.read_text())["chosen"][family]
    size = get_size("evidence")
    if family == "refusal_mix":
        assert size.refusal_mix_fraction == choice["refusal_mix_fraction"]
        return
    shipped = next(m for m in methods_for(size) + opt_in_methods(size) if m.name == family)  # each named as its family
    calibrated = Method("chosen", "chosen", choice["config"])
    assert _calibrated_fields(build_config(shipped.resolved("/ref"), tmp_path)) == \
        _calibrated_fields(build_config(calibrated.resolved("/ref"), tmp_path))


@pytest.mark.parametrize("family", ["direction", "safe_lora", "asft", "refusal_mix", "lower_lr"])
def test_each_baseline_recipe_ships_the_equal_effort_sweeps_choice(family, tmp_path):
    """recipes/embedded-default/<family>.yaml, read by the real parser, carries the sweep's calibrated choice for that
    family (the reference names the embedded default before `trl-safedistill align`), so a user can pick the baseline
    with the same settings the evidence run measures."""
    from trl_safedistill.train import make_parser

    choice = json.loads(EQUAL_EFFORT_SWEEP.read_text())["chosen"][family]
    recipe = RECIPES / "embedded-default" / f"{family}.yaml"
    script_args, args, model_args = make_parser().parse_args_and_config(args=["--config", str(recipe), "--bf16", "false"])
    assert model_args.model_name_or_path == "outputs/embedded-default/aligned/merged"
    assert args.distill_format == "standard"
    plain = _calibrated_fields(build_config(Method("plain", "plain", {}), tmp_path))
    if family == "refusal_mix":
        assert script_args.refusal_mix_fraction == choice["refusal_mix_fraction"]
        assert _calibrated_fields(args) == plain
        return
    if family == "lower_lr":  # the sweep's fraction of the rate, applied to standard.yaml's rate; nothing else on
        _, standard, _ = make_parser().parse_args_and_config(
            args=["--config", str(RECIPES / "embedded-default" / "standard.yaml"), "--bf16", "false"])
        assert args.learning_rate == pytest.approx(choice["value"] * standard.learning_rate, rel=1e-9)
        assert choice["config"]["learning_rate"] == pytest.approx(choice["value"] * get_size("evidence").distil_lr)
        assert script_args.refusal_mix_fraction == 0.0 and _calibrated_fields(args) == plain
        return
    assert script_args.refusal_mix_fraction == 0.0
    for key in REFERENCE_FIELDS:
        if getattr(args, key, None) is not None:
            assert getattr(args, key) == "embedded-default"
            setattr(args, key, "/ref")
    calibrated = build_config(Method("chosen", "chosen", choice["config"]).resolved("/ref"), tmp_path)
    assert _calibrated_fields(args) == _calibrated_fields(calibrated)


@pytest.mark.parametrize("student", ["qwen2.5-1.5b-instruct", "llama-3.2-1b-instruct", "bloomz-1b1"])
@pytest.mark.parametrize("family", ["safe_lora", "asft"])
def test_each_paper_students_baseline_recipe_ships_the_sweeps_choice(student, family, tmp_path):
    """recipes/<student>/{safe_lora,asft}.yaml: QLoRA, CasCoD like that student's slowed.yaml, the equal-effort sweep's
    calibrated field values, and the same unaligned weights as slowed.yaml's slow-tuning reference."""
    import yaml

    from trl_safedistill.train import make_parser

    choice = json.loads(EQUAL_EFFORT_SWEEP.read_text())["chosen"][family]
    _, args, model_args = make_parser().parse_args_and_config(
        args=["--config", str(RECIPES / student / f"{family}.yaml"), "--bf16", "false"])
    slowed = yaml.safe_load((RECIPES / student / "slowed.yaml").read_text())
    assert model_args.load_in_4bit and model_args.model_name_or_path == slowed["model_name_or_path"]
    assert args.distill_format == slowed["distill_format"] == "cascade"
    assert getattr(args, f"{family}_reference") == slowed["slow_tuning_reference"]
    setattr(args, f"{family}_reference", "/ref")
    calibrated = build_config(Method("chosen", "chosen", choice["config"]).resolved("/ref"), tmp_path)
    assert _calibrated_fields(args) == _calibrated_fields(calibrated)
