"""``adaptive``: adaptive thinking (Chen et al., arXiv 2404.09170, later versions): one student, two modes.

Each record is trained in one of two modes, the one a router would choose for its question:

* ``standard`` (think first, "pre-thinking"): ``{rationale}\\n{answer phrase} {answer}.``
* ``answer_first`` (answer first, "post-thinking"): ``{answer phrase} {answer}.{marker} {rationale}``; at
  inference generation stops at the marker, right after the answer.

The assistant turn opens with the mode's tag (:data:`MODE_TAGS`, e.g. ``"Mode: answer first\\n"``), the text the
router emits; the tag is part of the prompt (no loss), the targets follow in the mode's order, so the student learns
both orders and which one the tag asks for. The mode of each record comes from ``modes`` (record id -> mode), the
router's training labels (:func:`trl_safedistill.formats.router.label_records`); without ``modes`` every record is
think-first, the decision of an untrained router (:class:`~trl_safedistill.formats.router.SoftPromptRouter` starts
with a zero head and breaks ties towards think-first). The tag wording and the tag-as-prompt choice are this
project's; the paper publishes no template.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..records import RationaleRecord
from .answer_first import DEFAULT_MARKER, AnswerFirstFormat
from .base import DistillFormat, TrainingSequence, render_prompt
from .standard import StandardFormat

#: The two modes, in the router's class order: index 0 (think first) is what a tie or an untrained router picks.
THINK_FIRST = StandardFormat.name
ANSWER_FIRST = AnswerFirstFormat.name
MODES: tuple[str, str] = (THINK_FIRST, ANSWER_FIRST)
#: The text each mode's assistant turn starts with: what the router emits, the student's cue.
MODE_TAGS: dict[str, str] = {THINK_FIRST: "Mode: think first\n", ANSWER_FIRST: "Mode: answer first\n"}
#: How the router's training labels are derived (``router_label_rule``; :mod:`trl_safedistill.formats.router`).
LABEL_RULES: tuple[str, str] = ("answer_correct", "answer_loss")


class AdaptiveFormat(DistillFormat):
    """Mixed think-first / answer-first training: the router's mode tag, then the targets in that mode's order."""

    name = "adaptive"
    assistant_prefix = MODE_TAGS[THINK_FIRST]

    def __init__(self, answer_phrase: str = "Therefore, the answer is", marker: str = DEFAULT_MARKER,
                 modes: Mapping[str, str] | None = None):
        super().__init__(answer_phrase)
        self.marker = marker
        self.formats: dict[str, DistillFormat] = {
            THINK_FIRST: StandardFormat(answer_phrase),
            ANSWER_FIRST: AnswerFirstFormat(answer_phrase, marker=marker),
        }
        unknown = sorted({mode for mode in (modes or {}).values() if mode not in MODES})
        if unknown:
            raise ValueError(f"adaptive format: unknown mode(s) {unknown}; a mode is one of {list(MODES)}")
        #: record id -> mode; ``None``: not labelled yet, every record think-first
        self.modes: dict[str, str] | None = dict(modes) if modes is not None else None

    def mode_of(self, record: RationaleRecord) -> str:
        """The mode ``record`` is trained in; a labelled format without this record's label is an error."""
        if self.modes is None:
            return THINK_FIRST
        if record.id not in self.modes:
            raise ValueError(f"adaptive format: record '{record.id}' has no router label (mode)")
        return self.modes[record.id]

    def sequences(self, record: RationaleRecord) -> list[TrainingSequence]:
        mode = self.mode_of(record)
        return [
            TrainingSequence(sequence.user_text, MODE_TAGS[mode] + sequence.assistant_prefix, sequence.targets)
            for sequence in self.formats[mode].sequences(record)
        ]

    def stop_for(self, mode: str) -> str | None:
        """The string generation may stop at in ``mode``: the marker after the answer (answer first), else none."""
        return self.formats[mode].stop_after_answer

    def mode_prompt(self, tokenizer: Any, question: str, description: str | None, mode: str,
                    chat: bool | None = None) -> str:
        """The rendered inference prompt of ``mode``: the user turn, then the mode's tag (as in training)."""
        return render_prompt(tokenizer, self.prompt_text(question, description),
                             MODE_TAGS[mode] + self.formats[mode].assistant_prefix, chat)
