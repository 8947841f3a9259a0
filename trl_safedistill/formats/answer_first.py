"""``answer_first``: post-thinking (Chen et al., arXiv 2404.09170, "Post-Semantic-Thinking", v1 idea).

Target: ``{answer phrase} {answer}.\\nExplanation: {rationale}``. The answer comes first, so it does not
inherit rationale errors, and generation may stop at the marker (:attr:`stop_after_answer`,
``"\\nExplanation:"``), saving the rationale's tokens at inference. The answer sentence is segment
ANSWER, the marker and rationale segment RATIONALE. The marker text is this project's choice
(``AnswerFirstFormat(marker=...)``); the paper does not publish a template.
"""

from __future__ import annotations

from ..records import RationaleRecord
from .base import DistillFormat, Piece, Segment, TrainingSequence

DEFAULT_MARKER = "\nExplanation:"


class AnswerFirstFormat(DistillFormat):
    name = "answer_first"

    def __init__(self, answer_phrase: str = "Therefore, the answer is", marker: str = DEFAULT_MARKER):
        super().__init__(answer_phrase)
        self.marker = marker
        self.stop_after_answer = marker

    def sequences(self, record: RationaleRecord) -> list[TrainingSequence]:
        return [
            self.sequence(
                record,
                [
                    Piece(self.answer_sentence(record.answer), Segment.ANSWER),
                    Piece(f"{self.marker} {record.rationale}", Segment.RATIONALE),
                ],
            )
        ]
