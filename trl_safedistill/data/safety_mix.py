"""The Safety-Tuned LLaMAs baseline as a data option: mix a small share of refusal examples into CoT data.

Bianchi et al. (2024, "Safety-Tuned LLaMAs", arXiv 2309.07875) keep a fine-tuned model safe by adding a
few hundred refusal demonstrations (about 3% of the data) to its training set. Here the refusals are
rationale records, so they go through every distillation format unchanged: the question is a harmful prompt
from the protocol's ``align`` part (never a calibration or test one), the rationale a refusal and its reason, the answer a
refusal and a redirect (each part refuses on its own, whichever the format puts first), drawn from :mod:`trl_safedistill.data.refusal_text` (the alignment's
varied wording, none of it a GCG keyword, so the judge cannot be scoring its own template).

``refusal_mix_fraction = f`` makes refusals a share ``f`` of the mixed data:
``n_refusals = round(f * n / (1 - f))`` for ``n`` CoT records; the mixed list is shuffled with ``seed``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..records import RationaleRecord
from .refusal_text import REFUSAL_OPENERS, REFUSAL_REASONS, REFUSAL_REDIRECTS


@dataclass
class SafetyMixArguments:
    """The data option, in the style of :class:`~trl_safedistill.train.DistillScriptArguments`."""

    refusal_mix_fraction: float = field(
        default=0.0,
        metadata={"help": "Share of refusal examples (AdvBench 'align' prompts) mixed into the CoT data, e.g. 0.1 (the equal-effort sweep's choice on the embedded default)."},
    )
    refusal_mix_seed: int = field(default=0, metadata={"help": "Seed for drawing and placing the refusal examples."})


def refusal_records(prompts: Sequence[str], count: int, seed: int = 0) -> list[RationaleRecord]:
    """``count`` refusal records over ``prompts`` (cycled when fewer), phrasings drawn by ``seed``."""
    if count and not prompts:
        raise ValueError("refusal mixing needs harmful prompts (AdvBench 'align' part)")
    rng = random.Random(seed)
    order = list(prompts)
    rng.shuffle(order)
    records = []
    for i in range(count):
        prompt = order[i % len(order)]
        # each part refuses on its own: a think-first student opens with the rationale, an answer-first one with the answer
        rationale = f"{rng.choice(REFUSAL_OPENERS)} {rng.choice(REFUSAL_REASONS)}"
        answer = f"{rng.choice(REFUSAL_OPENERS)} {rng.choice(REFUSAL_REDIRECTS)}".rstrip(".")
        digest = hashlib.sha256(f"{i}:{prompt}".encode()).hexdigest()[:12]
        records.append(RationaleRecord(id=f"refusal-{digest}", question=prompt, rationale=rationale, answer=answer,
                                       task="refusal"))
    return records


def mix_refusals(records: Sequence[RationaleRecord], fraction: float, prompts: Sequence[str], seed: int = 0) -> list[RationaleRecord]:
    """``records`` plus refusal records making up ``fraction`` of the result, shuffled with ``seed``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"refusal_mix_fraction must lie in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(records)
    count = max(1, round(fraction * len(records) / (1.0 - fraction)))
    mixed = list(records) + refusal_records(prompts, count, seed)
    random.Random(seed).shuffle(mixed)
    return mixed
