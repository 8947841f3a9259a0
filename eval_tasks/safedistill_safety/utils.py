"""lm-eval hooks for this folder (``!function utils.X``); the logic lives in ``trl_safedistill.evaluation.tasks``."""

from trl_safedistill.evaluation.tasks import (  # noqa: F401
    agieval_process_docs,
    arc_process_docs,
    doc_to_choice,
    doc_to_target,
    doc_to_text,
    load,
    process_generation,
    process_over_refusal,
    process_protocol_benign,
    process_protocol_harmful,
    process_refusal,
    xstest_process_docs,
)
