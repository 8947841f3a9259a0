"""Evaluation suite: safety (refusal, over-refusal, guard harmfulness), IND (BBH, from bbh-cot) and OOD (MMLU, ARC, AGIEval).

Modules, one idea each: :mod:`.refusal` (string scorers), :mod:`.answers` (answer extraction and
matching), :mod:`.items` (bbh-cot and MMLU items -> evaluation documents), :mod:`.prepare` (offline task
files), :mod:`.lm` (the format-aware lm-eval model ``safedistill-hf``), :mod:`.stats` (bootstrap CIs),
:mod:`.run` (evaluate a loaded model), :mod:`.report` (metrics.json, report.md, PNG), :mod:`.cli`.
Nothing heavy is imported here.
"""
