"""The distillation methods the demo compares: same data, same steps, same seed, from the aligned start.

========================  ==============================================================================
name                      what differs from ``standard``
========================  ==============================================================================
standard                  standard CoT (question -> rationale -> answer), the product's lr
slowed                    + low-entropy masking + slow tuning (:data:`SLOWED_DEFAULTS`)
cascade                   CasCoD format (q->r and (q, r)->a, alpha 0.1)
cascade_slowed            CasCoD + the same SLowED settings
answer_first              post-thinking format (answer, then rationale)
standard_lr<x>            standard at a lower learning rate (two values: :attr:`RunSize.lower_lrs`)
standard_refusal_mix      standard with 5% refusal examples mixed into the data (Safety-Tuned LLaMAs)
========================  ==============================================================================

:data:`SLOWED_DEFAULTS` are the settings ``trl-safedistill sweep`` recommends (see the README's Results).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .sizes import RunSize

#: ``slow_tuning_reference`` value that a demo run resolves to its own pre-alignment weights (the ``prepare`` stage's
#: base model): the reference of ``slow_tuning_unit: reference`` and of the ``direction`` rule.
PRE_ALIGNMENT = "pre-alignment"

#: SLowED settings of the ``slowed`` methods (entropy masking + slow tuning): the best SLowED point of the shipped
#: ``trl-safedistill sweep --size default`` (recipes/sweep/embedded-default.yaml; README, Results): mask the lowest-
#: entropy half of the rationale tokens, and let the distillation undo at most 2% of the alignment delta per layer
#: (``direction`` rule against the pre-alignment weights). Measured by the sweep at the last step: refusal 45/48
#: held-out AdvBench prompts (aligned start 47/48), held-out rationale loss 1.20, against 16/48 and 1.03 for standard
#: CoT; the ``project`` budgets that stayed within 5 points of the aligned start reached 1.25-1.45.
SLOWED_DEFAULTS: dict[str, Any] = {
    "entropy_mask_mode": "fraction",
    "entropy_mask_quantile": 0.5,
    "entropy_mask_protect_answer": True,
    "slow_tuning_rule": "direction",
    "slow_tuning_budget": 0.02,
    "slow_tuning_budget_growth": 1.0,
    "slow_tuning_reference": PRE_ALIGNMENT,
}


@dataclass(frozen=True)
class Method:
    """One student: its config overrides (SafeDistillConfig fields) and data option."""

    name: str
    label: str
    config: dict[str, Any] = field(default_factory=dict)
    refusal_mix_fraction: float = 0.0
    family: str = "standard"  # plot grouping: standard | slowed | cascade | answer_first | lr_control | data_mix

    @property
    def distill_format(self) -> str:
        return self.config.get("distill_format", "standard")

    def resolved(self, pre_alignment: str) -> Method:
        """This method with the :data:`PRE_ALIGNMENT` placeholder replaced by the path of the pre-alignment weights."""
        if self.config.get("slow_tuning_reference") != PRE_ALIGNMENT:
            return self
        return dataclasses.replace(self, config={**self.config, "slow_tuning_reference": pre_alignment})


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
        Method("cascade_slowed", "CasCoD + SLowED", {**base, "distill_format": "cascade", **slowed}, family="slowed"),
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


def opt_in_methods(size: RunSize, slowed: dict[str, Any] | None = None) -> list[Method]:
    """Methods a run trains only when they are named (``--methods``): ablations and added baselines. The default
    demo's list (:func:`methods_for`) leaves them out, so its time budget does not grow with each one added."""
    return []


def select(methods: list[Method], names: list[str] | None) -> list[Method]:
    """The methods named in ``names`` (all when ``None``); unknown names raise with the known ones."""
    if not names:
        return methods
    known = {m.name: m for m in methods}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(known)}")
    return [known[n] for n in names]
