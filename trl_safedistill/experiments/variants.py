"""The distillation methods the demo compares: same data, same steps, same seed, from the aligned start.

========================  ==============================================================================
name                      what differs from ``standard``
========================  ==============================================================================
standard                  standard CoT (question -> rationale -> answer), the product's lr
slowed                    + low-entropy masking + slow tuning (:data:`SLOWED_DEFAULTS`)
cascade                   CasCoD format (q->r and (q, r)->a, alpha 0.1)
answer_first              post-thinking format (answer, then rationale)
standard_lr<x>            standard at a lower learning rate (two values: :attr:`RunSize.lower_lrs`)
standard_refusal_mix      standard with 10% refusal examples mixed into the data (Safety-Tuned LLaMAs)
========================  ==============================================================================

Opt-in methods (:func:`opt_in_methods`), trained only when named (``trl-safedistill demo --methods standard,safe_lora``,
``python -m trl_safedistill.experiments.evidence run --methods standard slowed slowed_mask_only ...``), so the default
run's time budget does not grow with each baseline added:

========================  ==============  ================================================================
name                      family          what differs from ``standard``
========================  ==============  ================================================================
cascade_slowed            slowed          CasCoD + the same SLowED settings (the recipes' ``slowed.yaml``)
slowed_mask_only          ablation        + low-entropy masking of :data:`SLOWED_DEFAULTS`, slow tuning off
slowed_slow_only          ablation        + slow tuning of :data:`SLOWED_DEFAULTS`, masking off
direction                 direction       + the direction rule alone (:data:`DIRECTION_SETTINGS`), masking off
safe_lora                 safe_lora       + Safe LoRA (arXiv 2405.16833) at the end of training, threshold 0.35
asft                      asft            + AsFT's regulariser (arXiv 2506.08473), lambda 100
========================  ==============  ================================================================

The two ablations and ``slowed`` (both modules) answer issue 17 item 5: which part of SLowED does the work. Every
calibrated setting (:data:`SLOWED_DEFAULTS`, :data:`DIRECTION_SETTINGS`, :data:`SAFE_LORA_SETTINGS`,
:data:`ASFT_SETTINGS` and the evidence size's ``refusal_mix_fraction``) is the choice of the version-2 equal-effort
sweep (``trl-safedistill sweep --equal-effort``, ``results/evidence-v2/equal-effort/sweep.json``; a test keeps them
equal), made on calibration data by one rule declared before any point was measured. Every method that needs the
weights before the safety alignment (slow tuning's ``reference`` unit and ``direction`` rule, Safe LoRA's and AsFT's
unaligned reference) names them :data:`PRE_ALIGNMENT`, which :meth:`Method.resolved` replaces by the run's own
pre-alignment model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .sizes import RunSize

#: Value of a reference field (:data:`REFERENCE_FIELDS`) that a demo run resolves to its own pre-alignment weights (the
#: ``prepare`` stage's base model): the reference of ``slow_tuning_unit: reference``, of the ``direction`` rule and the
#: unaligned weights of Safe LoRA and AsFT.
PRE_ALIGNMENT = "pre-alignment"
#: The SafeDistillConfig fields that name the weights before the safety alignment.
REFERENCE_FIELDS = ("slow_tuning_reference", "safe_lora_reference", "asft_reference")

#: SLowED settings of the ``slowed`` methods (entropy masking + slow tuning): the ``slowed`` choice of the version-2
#: equal-effort sweep (``results/evidence-v2/equal-effort/sweep.json``; module docstring of
#: :mod:`~trl_safedistill.experiments.sweep`, README "Equal tuning effort"): mask the lowest-entropy half of the rationale
#: tokens and keep each layer's drift from the aligned start within 0.25 of its alignment delta ||W_aligned -
#: W_pre-alignment|| (``project`` rule, ``reference`` unit). No point of the family's ladder (budget 1, 0.75, 0.5, 0.25)
#: kept the calibration refusal within 5 points of the aligned start; 0.25 is the one of best balance (refusal 57.3%,
#: over-refusal 8.3%, rationale loss 1.149; aligned start 81.3%, 15.5%, 1.989; standard CoT 1.0%, 0.0%, 0.419).
SLOWED_DEFAULTS: dict[str, Any] = {
    "entropy_mask_mode": "fraction",
    "entropy_mask_quantile": 0.5,
    "entropy_mask_protect_answer": True,
    "slow_tuning_rule": "project",
    "slow_tuning_unit": "reference",
    "slow_tuning_budget": 0.25,
    "slow_tuning_budget_growth": 1.0,
    "slow_tuning_reference": PRE_ALIGNMENT,
}


#: Safe LoRA as a baseline (:mod:`trl_safedistill.methods.safe_lora`): the projection at the end of training against the
#: run's pre-alignment weights, similarity threshold 0.35: the equal-effort sweep's ``safe_lora`` choice (none of 0.1,
#: 0.2, 0.35, 0.5 qualified; 0.35 has the best balance, calibration refusal 76.0%, over-refusal 11.9%, loss 1.944).
SAFE_LORA_SETTINGS: dict[str, Any] = {"safe_lora": True, "safe_lora_reference": PRE_ALIGNMENT, "safe_lora_threshold": 0.35}
#: AsFT as a baseline (:mod:`trl_safedistill.methods.asft`): its regulariser against the run's pre-alignment weights,
#: lambda 100: the equal-effort sweep's ``asft`` choice (none of 0.1, 1, 10, 100 qualified; 100 has the best balance,
#: calibration refusal 75.0%, over-refusal 11.9%, loss 1.921).
ASFT_SETTINGS: dict[str, Any] = {"asft": True, "asft_reference": PRE_ALIGNMENT, "asft_lambda": 100.0}
#: The true direction rule alone (:mod:`trl_safedistill.methods.slow_tuning`, ``direction``: only the component of the
#: update along the alignment delta D = W_aligned - W_pre-alignment is limited, at most ``slow_tuning_budget`` of
#: ||D|| may be undone), masking off: the equal-effort sweep's ``direction`` choice. None of the budgets 0.2, 0.08,
#: 0.03, 0.01 kept the refusal (calibration refusal 1-3%, loss 0.419-0.421, the same as standard CoT: the update that
#: erases the refusal is not along D); 0.2 has the best balance, by one prompt.
DIRECTION_SETTINGS: dict[str, Any] = {"slow_tuning_rule": "direction", "slow_tuning_budget": 0.2,
                                      "slow_tuning_budget_growth": 1.0, "slow_tuning_reference": PRE_ALIGNMENT}


@dataclass(frozen=True)
class Method:
    """One student: its config overrides (SafeDistillConfig fields) and data option."""

    name: str
    label: str
    config: dict[str, Any] = field(default_factory=dict)
    refusal_mix_fraction: float = 0.0
    #: plot and report grouping: standard | slowed | cascade | answer_first | lr_control | data_mix | ablation |
    #: safe_lora | asft (evidence.FAMILY maps it to the evidence report's family)
    family: str = "standard"

    @property
    def distill_format(self) -> str:
        return self.config.get("distill_format", "standard")

    def resolved(self, pre_alignment: str) -> Method:
        """This method with every :data:`PRE_ALIGNMENT` placeholder (in :data:`REFERENCE_FIELDS`) replaced by the path
        of the pre-alignment weights; the method itself when it holds none."""
        placeholders = {key: pre_alignment for key in REFERENCE_FIELDS if self.config.get(key) == PRE_ALIGNMENT}
        if not placeholders:
            return self
        return dataclasses.replace(self, config={**self.config, **placeholders})


def lr_text(lr: float) -> str:
    """``1.5e-4`` -> ``"1.5e-4"``, ``5e-05`` -> ``"5e-5"``: two significant digits, no padding."""
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _lr_name(lr: float) -> str:
    return f"standard_lr{lr_text(lr)}"


def methods_for(size: RunSize, slowed: dict[str, Any] | None = None, learning_rate: float | None = None) -> list[Method]:
    """The methods of a run, in report order."""
    slowed = dict(SLOWED_DEFAULTS if slowed is None else slowed)
    lr = learning_rate if learning_rate is not None else size.distil_lr
    base = {"learning_rate": lr}
    methods = [
        Method("standard", "standard CoT", {**base, "distill_format": "standard"}, family="standard"),
        Method("slowed", "SLowED (standard)", {**base, "distill_format": "standard", **slowed}, family="slowed"),
        Method("cascade", "CasCoD", {**base, "distill_format": "cascade"}, family="cascade"),
        Method("answer_first", "answer-first", {**base, "distill_format": "answer_first"}, family="answer_first"),
    ]
    scale = lr / size.distil_lr
    for lower in size.lower_lrs:
        value = lower * scale
        methods.append(Method(_lr_name(value), f"standard, lr {value:.2g}", {"learning_rate": value, "distill_format": "standard"},
                              family="lr_control"))
    methods.append(Method("standard_refusal_mix", f"standard + {size.refusal_mix_fraction:.0%} refusals",
                          {**base, "distill_format": "standard"}, refusal_mix_fraction=size.refusal_mix_fraction,
                          family="data_mix"))
    return methods


def masking_only(slowed: dict[str, Any]) -> dict[str, Any]:
    """SLowED settings with slow tuning off: the ``entropy_mask_*`` fields kept, every ``slow_tuning_*`` field dropped
    (so no reference is loaded) and the rule set to ``off``."""
    return {**{k: v for k, v in slowed.items() if not k.startswith("slow_tuning_")}, "slow_tuning_rule": "off"}


def slow_tuning_only(slowed: dict[str, Any]) -> dict[str, Any]:
    """SLowED settings with low-entropy masking off: the ``slow_tuning_*`` fields kept, the ``entropy_mask_*`` ones
    dropped and the mode set to ``off``."""
    return {**{k: v for k, v in slowed.items() if not k.startswith("entropy_mask_")}, "entropy_mask_mode": "off"}


def opt_in_methods(size: RunSize, slowed: dict[str, Any] | None = None) -> list[Method]:
    """Methods a run trains only when they are named (``--methods``): CasCoD + SLowED, the SLowED ablation (masking
    alone, slow tuning alone; ``slowed`` of :func:`methods_for` is both), the direction rule alone, the Safe LoRA and
    AsFT baselines (table in the module docstring) and adaptive thinking, all at the size's learning rate from the
    aligned start. The default demo's list
    (:func:`methods_for`) leaves them out, so its time budget does not grow with each one added."""
    slowed = dict(SLOWED_DEFAULTS if slowed is None else slowed)
    base = {"learning_rate": size.distil_lr, "distill_format": "standard"}
    return [
        Method("cascade_slowed", "CasCoD + SLowED", {**base, "distill_format": "cascade", **slowed}, family="slowed"),
        Method("slowed_mask_only", "SLowED ablation: masking alone", {**base, **masking_only(slowed)}, family="ablation"),
        Method("slowed_slow_only", "SLowED ablation: slow tuning alone", {**base, **slow_tuning_only(slowed)},
               family="ablation"),
        Method("direction", "direction rule (standard)", {**base, **DIRECTION_SETTINGS}, family="direction"),
        Method("safe_lora", "Safe LoRA (standard)", {**base, **SAFE_LORA_SETTINGS}, family="safe_lora"),
        Method("asft", "AsFT (standard)", {**base, **ASFT_SETTINGS}, family="asft"),
        # adaptive thinking (issue 19): mixed think-first / answer-first records, router trained after distillation
        Method("adaptive", "adaptive thinking", {"learning_rate": size.distil_lr, "distill_format": "adaptive"},
               family="adaptive"),
    ]


def select(methods: list[Method], names: list[str] | None) -> list[Method]:
    """The methods named in ``names`` (all when ``None``); unknown names raise with the known ones."""
    if not names:
        return methods
    known = {m.name: m for m in methods}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(known)}")
    return [known[n] for n in names]
