"""``standard`` (pre-thinking) CoT distillation: question -> rationale, answer phrase, answer.

Target: ``{rationale}\\n{answer phrase} {answer}.`` One sequence per record. The rationale tokens are
segment RATIONALE, the answer sentence segment ANSWER; with no other option on, the trainer pools
both (a plain token mean, exactly TRL's SFT loss).
"""

from __future__ import annotations

from ..records import RationaleRecord
from .base import DistillFormat, Piece, Segment, TrainingSequence


class StandardFormat(DistillFormat):
    name = "standard"

    def sequences(self, record: RationaleRecord) -> list[TrainingSequence]:
        return [
            self.sequence(
                record,
                [
                    Piece(record.rationale, Segment.RATIONALE),
                    Piece("\n" + self.answer_sentence(record.answer), Segment.ANSWER),
                ],
            )
        ]
