"""HarmAug (arXiv 2410.01524): distil a small safety guard from a big one, and use a guard as a judge.

Modules:

* :mod:`~trl_safedistill.guard.llama_guard` -- the teacher: Llama Guard 3 prompt format and P(unsafe)
  read from the next-token distribution after ``"\\n\\n"``.
* :mod:`~trl_safedistill.guard.augment` -- the generator with the affirmative prefix
  ``I have an idea for a prompt:``, the instruction parser, the responder, and the resumable
  ``guard augment`` loop writing an owner-only JSONL.
* :mod:`~trl_safedistill.guard.backends` -- text generators: local transformers models and an
  OpenAI-compatible ``/v1/completions`` endpoint.
* :mod:`~trl_safedistill.guard.distill` -- the student: a sequence-pair classifier trained with
  ``0.5 * (CE + KL(teacher || student))`` and class-balanced sampling on the transformers Trainer.
* :mod:`~trl_safedistill.guard.metrics` -- F1, AUPRC and a PR-curve PNG.
* :mod:`~trl_safedistill.guard.judge` -- ``load_judge("llama-guard:...")`` / ``load_judge("distilled:...")``.
* :mod:`~trl_safedistill.guard.cli` -- ``trl-safedistill guard augment|distill|eval``.
"""

from __future__ import annotations

_LAZY = {
    "load_judge": "trl_safedistill.guard.judge",
    "LlamaGuardScorer": "trl_safedistill.guard.llama_guard",
    "distillation_loss": "trl_safedistill.guard.distill",
    "AFFIRMATIVE_PREFIX": "trl_safedistill.guard.augment",
    "parse_instruction": "trl_safedistill.guard.augment",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trl_safedistill.guard' has no attribute {name!r}")


__all__ = sorted(_LAZY)
