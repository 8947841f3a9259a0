"""``cascade``: CasCoD, cascading decomposed CoT distillation (Dai et al., EMNLP 2024, arXiv 2405.19842).

Two sequences per record, learnt jointly in the same batches:

1. q -> r: prompt ``P`` + ``Rationale:``, target the rationale (the answer removed) and end of turn.
2. (q, r) -> a: prompt ``P`` + ``Rationale: {r}\\n{answer phrase}``, target `` {answer}.`` and end of
   turn: the teacher rationale sits in the prompt (teacher forcing), only answer tokens carry loss.

Loss (in the trainer): ``L = (1 - alpha) * L_rationale + alpha * L_answer``, each a token mean over its
own segment's tokens in the batch; ``alpha`` = ``SafeDistillConfig.cascade_alpha`` (0.1, the
released run script). Inference is two-pass: generate ``r`` from ``P + Rationale:``, then append
``\\n{answer phrase}`` and generate the answer (:meth:`CascadeFormat.second_pass_prompt`).
"""

from __future__ import annotations

from ..records import RationaleRecord
from .base import DistillFormat, Piece, Segment, TrainingSequence


class CascadeFormat(DistillFormat):
    name = "cascade"
    assistant_prefix = "Rationale:"

    def sequences(self, record: RationaleRecord) -> list[TrainingSequence]:
        rationale_step = self.sequence(record, [Piece(" " + record.rationale, Segment.RATIONALE)])
        answer_step = self.sequence(
            record,
            [Piece(f" {record.answer}.", Segment.ANSWER)],
            extra_prefix=f" {record.rationale}\n{self.answer_phrase}",
        )
        return [rationale_step, answer_step]

    def second_pass_prompt(self, first_prompt: str, generated_rationale: str) -> str:
        """The prompt of the answer pass: the first prompt, the generated rationale and the answer phrase."""
        return f"{first_prompt} {generated_rationale.strip()}\n{self.answer_phrase}"
