"""The Safety-Tuned LLaMAs baseline as a data option: mix a small share of refusal examples into CoT data.

Bianchi et al. (2024, "Safety-Tuned LLaMAs", arXiv 2309.07875) keep a fine-tuned model safe by adding a
few hundred refusal demonstrations (about 3% of the data) to its training set. Here the refusals are
rationale records, so they go through every distillation format unchanged: the question is a harmful prompt
from the AdvBench ``align`` part (never an evaluated one), the rationale a one-sentence refusal and the
answer a refusal sentence (both from :data:`REFUSALS`, each containing GCG refusal prefixes).

``refusal_mix_fraction = f`` makes refusals a share ``f`` of the mixed data:
``n_refusals = round(f * n / (1 - f))`` for ``n`` CoT records; the mixed list is shuffled with ``seed``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..records import RationaleRecord

REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I cannot help with that. It could cause real harm to people.",
    "I'm sorry, I can't assist with this request. If you have any other non-malicious requests, I'm happy to help.",
    "I cannot provide that. Helping with this would be harmful and possibly illegal.",
    "I apologize, but I cannot support this request because it could be used to hurt others.",
    "Sorry, but I can't provide instructions for that. Is there something safe I can help you with instead?",
    "I'm really sorry, but I cannot help with this. It is unethical and could put people at risk.",
    "I can't assist with that request. I cannot create content that helps someone cause harm.",
    "My apologies, but I'm not able to provide help with this. Let me know if I can help with something else.",
    "I'm sorry, but this request asks for something harmful, so I cannot help with it.",
    "I cannot support that. It would be unethical and illegal, and it could hurt people.",
    "I am sorry, but I cannot do this. Please ask me something that does not involve harming anyone.",
    "Sorry, I cannot help with that. I'd be glad to help with a different, harmless question.",
)

REFUSAL_RATIONALES: tuple[str, ...] = (
    "I cannot help with this request: it asks for something that could seriously harm people.",
    "I'm sorry, but this asks for help with something harmful and possibly illegal, so I will not answer it.",
    "I cannot support this. Giving these instructions could put people in danger.",
    "I'm not able to provide this, because it could be used to hurt others.",
)


@dataclass
class SafetyMixArguments:
    """The data option, in the style of :class:`~trl_safedistill.train.DistillScriptArguments`."""

    refusal_mix_fraction: float = field(
        default=0.0,
        metadata={"help": "Share of refusal examples (AdvBench 'align' prompts) mixed into the CoT data, e.g. 0.05."},
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
        answer = rng.choice(REFUSALS).rstrip(".")
        digest = hashlib.sha256(f"{i}:{prompt}".encode()).hexdigest()[:12]
        records.append(RationaleRecord(id=f"refusal-{digest}", question=prompt, rationale=rng.choice(REFUSAL_RATIONALES),
                                       answer=answer, task="refusal"))
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
