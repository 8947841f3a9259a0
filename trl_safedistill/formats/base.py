"""What every distillation format shares: segments, pieces, prompt rendering and tokenization.

A format turns one :class:`~trl_safedistill.records.RationaleRecord` into one or more
:class:`TrainingSequence` s: a prompt (user text and assistant prefix, no loss) and target
:class:`Piece` s, each a text with a :class:`Segment` (rationale or answer tokens). :func:`tokenize_sequence` renders a sequence with the
tokenizer's chat template (chat students) or as plain text (base causal LMs) and returns
``input_ids``, ``labels`` (``-100`` on the prompt) and ``segment_ids`` aligned with ``input_ids``;
the trainer weighs each target token by its segment.

Rendering (this project's choice where the papers differ):

* user text: ``Task Description:\\n{description}\\nQ: {question}`` (the description line only when the
  record has one), CasCoD's prompt without the trailing ``A:``;
* chat: ``apply_chat_template([user], add_generation_prompt=True)`` then the format's assistant
  prefix (e.g. ``Rationale:``) and the target; the target ends with the template's end-of-turn text;
* plain: ``{user text}\\n\\nA: {assistant prefix}`` then the target and the EOS token.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ..records import RationaleRecord

IGNORE_INDEX = -100


class Segment(IntEnum):
    """What a token is, for the loss: prompt tokens carry none, the others are weighed per type."""

    PROMPT = 0
    RATIONALE = 1
    ANSWER = 2


@dataclass(frozen=True)
class Piece:
    """A span of target text of one segment."""

    text: str
    segment: Segment


@dataclass(frozen=True)
class TrainingSequence:
    """One training example before tokenization: prompt (no loss) and target pieces."""

    user_text: str
    assistant_prefix: str
    targets: tuple[Piece, ...]


def user_text(question: str, description: str | None = None) -> str:
    """The user turn of every format: CasCoD's prompt body (task description line only when given)."""
    if description:
        return f"Task Description:\n{description}\nQ: {question}"
    return f"Q: {question}"


def is_chat_tokenizer(tokenizer: Any) -> bool:
    """Whether the tokenizer has a chat template (then prompts are rendered with it)."""
    return bool(getattr(tokenizer, "chat_template", None))


def end_of_turn_text(tokenizer: Any, chat: bool) -> str:
    """The text that closes an assistant turn: the chat template's end marker, else the EOS token."""
    if chat:
        sentinel = "\u2063SENTINEL\u2063"
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": sentinel}], tokenize=False
        )
        suffix = rendered[rendered.index(sentinel) + len(sentinel) :].rstrip()
        if suffix:
            return suffix
    return tokenizer.eos_token or ""


def render_prompt(tokenizer: Any, text: str, assistant_prefix: str = "", chat: bool | None = None) -> str:
    """The prompt string a student sees before generating: the same in training and at inference."""
    chat = is_chat_tokenizer(tokenizer) if chat is None else chat
    if chat:
        head = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return head + assistant_prefix
    return f"{text}\n\nA: {assistant_prefix}" if assistant_prefix else f"{text}\n\nA:"


class DistillFormat(ABC):
    """A distillation format: record -> training sequences, and the prompts used at inference.

    Subclasses define :meth:`sequences`, and set :attr:`assistant_prefix` (text the assistant turn
    starts with, part of the prompt) and :attr:`stop_after_answer` (a string at which generation may
    stop once the answer is out, or ``None``).
    """

    name: str = ""
    assistant_prefix: str = ""
    stop_after_answer: str | None = None

    def __init__(self, answer_phrase: str = "Therefore, the answer is"):
        self.answer_phrase = answer_phrase

    @abstractmethod
    def sequences(self, record: RationaleRecord) -> list[TrainingSequence]:
        """The training sequences for one record."""

    def answer_sentence(self, answer: str) -> str:
        return f"{self.answer_phrase} {answer}."

    def prompt_text(self, question: str, description: str | None = None) -> str:
        return user_text(question, description)

    def inference_prompt(self, tokenizer: Any, question: str, description: str | None = None, chat: bool | None = None) -> str:
        """The rendered prompt for the first (or only) generation at inference."""
        return render_prompt(tokenizer, self.prompt_text(question, description), self.assistant_prefix, chat)


    def sequence(self, record: RationaleRecord, targets: list[Piece], extra_prefix: str = "") -> TrainingSequence:
        """A sequence with this format's prompt for ``record`` and the given targets."""
        return TrainingSequence(
            self.prompt_text(record.question, record.description), self.assistant_prefix + extra_prefix, tuple(targets)
        )


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two id sequences share (where a context's tokens end inside a longer encoding)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_sequence(
    tokenizer: Any,
    sequence: TrainingSequence,
    *,
    chat: bool | None = None,
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
) -> dict[str, list[int]]:
    """Render and tokenize one sequence; return ``input_ids``, ``labels`` and ``segment_ids``.

    The prompt is rendered with :func:`render_prompt`. The end-of-turn text is appended to the last target
    piece, so the student learns to stop. The whole string is tokenized once (the tokens the model
    will see at inference) and each token takes the segment of the character it starts at; with a
    slow tokenizer (no offsets) pieces are tokenized one by one instead. With ``max_length`` the result
    is cut to it (:func:`cut_to_length`), whatever that removes.
    """
    chat = is_chat_tokenizer(tokenizer) if chat is None else chat
    prompt = render_prompt(tokenizer, sequence.user_text, sequence.assistant_prefix, chat)
    texts = [prompt] + [p.text for p in sequence.targets]
    segments = [Segment.PROMPT] + [p.segment for p in sequence.targets]
    eot = end_of_turn_text(tokenizer, chat)
    texts[-1] = texts[-1] + eot

    full = "".join(texts)
    char_segment: list[int] = []
    for text, segment in zip(texts, segments):
        char_segment.extend([int(segment)] * len(text))
    if getattr(tokenizer, "is_fast", False):
        encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = list(encoding["input_ids"])
        segment_ids = []
        for start, end in encoding["offset_mapping"]:
            position = min(start, len(char_segment) - 1)
            # A token that starts on whitespace belonging to a boundary takes the segment of its first non-space char
            while position < end - 1 and full[position].isspace():
                position += 1
            segment_ids.append(char_segment[position] if end > start else int(Segment.PROMPT))
    else:
        input_ids, segment_ids = [], []
        for text, segment in zip(texts, segments):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            input_ids.extend(ids)
            segment_ids.extend([int(segment)] * len(ids))
    bos = getattr(tokenizer, "bos_token_id", None)
    if not chat and bos is not None and getattr(tokenizer, "add_bos_token", False) and (not input_ids or input_ids[0] != bos):
        input_ids = [bos] + input_ids
        segment_ids = [int(Segment.PROMPT)] + segment_ids
    labels = [tok if seg != Segment.PROMPT else IGNORE_INDEX for tok, seg in zip(input_ids, segment_ids)]
    return cut_to_length({"input_ids": input_ids, "labels": labels, "segment_ids": segment_ids}, max_length, truncation_mode)


#: What to do with a record longer than ``max_length`` tokens (``SafeDistillConfig.overlong``, applied by
#: :func:`trl_safedistill.dataset.tokenize_records`); the first never loses an answer silently.
OVERLONG_POLICIES = ("error", "skip", "truncate_rationale", "truncate")


def cut_to_length(example: dict[str, list[int]], max_length: int | None, truncation_mode: str = "keep_start") -> dict[str, list[int]]:
    """``example``'s token lists cut to ``max_length`` as TRL cuts them: the start kept (``keep_start``) or the end.

    What is cut is lost, the answer too when it lies there: :class:`~trl_safedistill.config.SafeDistillConfig`'s
    ``overlong`` policy decides whether a record may be cut at all.
    """
    if max_length is None or len(example["input_ids"]) <= max_length:
        return example
    window = slice(None, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
    return {key: values[window] for key, values in example.items()}
