"""SafeDistillConfig: TRL's SFTConfig plus every field of the distillation formats and SLowED.

Fields, by group:

* **Format** — ``distill_format`` (``standard`` | ``cascade`` | ``answer_first`` | ``compressed`` | ``adaptive``),
  ``answer_phrase``, ``cascade_alpha`` (CasCoD's alpha), ``answer_first_marker``, ``compression_ratios``
  (TokenSkip's ratio set for ``compressed``), the ``router_*`` fields (``adaptive``'s soft-prompt router).
* **Data** — ``dataset_path``/``dataset_config`` style options live in the training script's
  ``ScriptArguments``; here only what the trainer itself needs: ``skip_invalid_records`` and ``overlong``
  (what to do with a record longer than ``max_length``).
* **SLowED** — low-entropy masking and slow tuning, inherited from
  :class:`~trl_safedistill.methods.arguments.SLowEDArguments` (documented there).

With ``distill_format="standard"`` and every SLowED option off, the trainer's loss is exactly
SFTTrainer's: the sum of the target tokens' negative log-likelihood over their count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from .formats.adaptive import LABEL_RULES
from .formats.base import OVERLONG_POLICIES
from .formats.compressed import DEFAULT_RATIOS, ratio_key
from .methods.arguments import SLowEDArguments

FORMAT_NAMES = ("standard", "cascade", "answer_first", "compressed", "adaptive")
#: What the safety monitor does when refusal falls more than its tolerance below the start (``trl_safedistill.safety_monitor``).
SAFETY_MONITOR_POLICIES = ("warn", "stop", "rollback")


@dataclass
class SafeDistillConfig(SLowEDArguments, SFTConfig):
    r"""Configuration of [`SafeDistillTrainer`]: [`~trl.SFTConfig`] plus the distillation options.

    Parameters:
        distill_format (`str`, defaults to `"standard"`):
            How records become training sequences: `standard` (question -> rationale, answer phrase, answer),
            `cascade` (CasCoD: q->r and (q, r)->a sequences, joint loss), `answer_first` (post-thinking: answer,
            marker, rationale) or `compressed` (TokenSkip: the prompt states a compression ratio g, the target is the
            rationale compressed to g, then the answer phrase and answer; the dataset must carry the `compressed`
            column written by `trl-safedistill compress`, see `compression_ratios`) or `adaptive` (adaptive thinking:
            each record trained think-first or answer-first, as the router labels it, after the mode's tag; a
            soft-prompt router is trained after distillation and saved in `router/`, see `router_label_rule`).
        answer_phrase (`str`, defaults to `"Therefore, the answer is"`):
            Phrase between rationale and answer (CasCoD's split phrase), used by every format and at inference.
        cascade_alpha (`float`, defaults to `0.1`):
            CasCoD's mixing weight: `L = (1 - alpha) * L_rationale + alpha * L_answer`, each a token mean over its own
            segment's target tokens in the (accumulated, all-rank) batch. 0.1 is the released run script's value.
        segment_loss (`str`, defaults to `"auto"`):
            `pooled`: one token mean over all target tokens (TRL's SFT loss); `mixed`: CasCoD's two-term mix;
            `auto`: `mixed` for `cascade`, `pooled` otherwise. Project choice: exposes the mix to every format.
        answer_first_marker (`str`, defaults to `"\nExplanation:"`):
            Text between the answer and the rationale in `answer_first`; generation may stop there.
        compression_ratios (`list[float]`, defaults to `[0.5, 0.6, 0.7, 0.8, 0.9, 1.0]`, TokenSkip's set):
            The ratios g of `compressed`, each in (0, 1]. Every record is trained at one g, drawn from this list by
            a stable hash of (`seed`, record id) (`trl_safedistill.formats.compressed.choose_ratio`), so a record
            keeps its g across epochs, shuffles and resumption (changing `seed` or the list redraws). g = 1 trains on
            the original rationale; any other g needs that ratio's text in the record's `compressed` mapping
            (`{"0.5": text, ...}`, one per `compress --ratios` value), else training stops with an error naming the
            record. Ignored by the other formats.
        router_label_rule (`str`, defaults to `"answer_correct"`):
            `adaptive` only: how each training record's mode (the router's label) is derived from the starting
            student, without annotation: `answer_correct` answers first when its greedy answer after the answer
            phrase, with no rationale, is the gold one; `answer_loss` answers first unless the rationale lowers the
            answer's loss by more than `router_loss_margin` nats per token (`trl_safedistill.formats.router`).
        router_virtual_tokens, router_steps, router_learning_rate, router_batch_size:
            `adaptive` only: the router's soft-prompt length (PEFT prompt tuning) and its training (AdamW, class-
            balanced cross-entropy on the labels, after distillation, on the distilled student kept frozen).
        safety_monitor_every (`int`, defaults to `0`):
            Steps between safety checks (`trl_safedistill.safety_monitor.SafetyMonitorCallback`: greedy responses to
            a fixed harmful and a fixed benign prompt set, judged by `safety_monitor_judge`, logged as
            `safety/refusal`, `safety/over_refusal`, `safety/degenerate`, plotted in `safety_monitor.png`); a check also
            runs at step 0 and at the last step. 0 with `safety_monitor_each_epoch` off: no monitor.
        safety_monitor_each_epoch (`bool`, defaults to `False`):
            Also check at the end of every epoch (and turn the monitor on by itself).
        safety_monitor_harmful, safety_monitor_benign (`str` or `None`):
            JSONL files with a `question` per line; None: the protocol calibration splits (AdvBench, benign
            look-alikes) under the evaluation cache (`trl_safedistill.evaluation.prepare`).
        safety_monitor_prompts (`int`, defaults to `16`), safety_monitor_max_new_tokens (`int`, defaults to `64`):
            Prompts per set (the first of each file) and tokens generated per response (the judge reads ~64).
        safety_monitor_policy (`str`, defaults to `"warn"`), safety_monitor_tolerance (`float`, defaults to `0.1`):
            When refusal falls more than `tolerance` (a share of prompts) below its step-0 value: `warn` logs,
            `stop` ends training, `rollback` also reloads the last checkpoint saved while refusal stayed within it.
        safety_monitor_judge (`str`, defaults to `"default"`):
            The refusal judge (`trl_safedistill.evaluation.judge.JUDGES`; `default` is the validated `refusal-v1`).
        bf16 (`bool` or `None`, defaults to `None`):
            Unlike SFTConfig (True), None picks bf16 when a CUDA GPU supports it, so the same config runs on a CPU.
        skip_invalid_records (`bool`, defaults to `False`):
            Skip (and count) invalid rationale records instead of stopping at the first with an error.
        overlong (`str`, defaults to `"error"`):
            What to do with a record one of whose sequences is longer than `max_length` tokens (cutting it at
            `max_length` would cut its answer away): `error` stops before training, naming the first such record, its
            length and this field; `skip` leaves those records out; `truncate_rationale` shortens each one's rationale
            (its tail, at a token boundary) until every sequence fits, keeping the answer (in `cascade`, both the
            rationale and the answer sequence); `truncate` cuts each sequence at `max_length` as TRL does (per
            `truncation_mode`), the answer too, for reproducing runs made that way. The count of affected records
            is printed and logged (`overlong/train`). Pre-tokenized datasets accept `error`, `skip` and `truncate`.
    """

    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision. None (default): on when a CUDA GPU supports it, off on CPU."},
    )
    distill_format: str = field(
        default="standard",
        metadata={"help": "Distillation format.", "choices": list(FORMAT_NAMES)},
    )
    answer_phrase: str = field(
        default="Therefore, the answer is",
        metadata={"help": "Phrase between rationale and answer, in training and at inference."},
    )
    cascade_alpha: float = field(
        default=0.1,
        metadata={"help": "CasCoD mix: L = (1 - alpha) * L_rationale + alpha * L_answer (released setting 0.1)."},
    )
    segment_loss: str = field(
        default="auto",
        metadata={
            "help": "pooled: one token mean over all targets (TRL's SFT loss); mixed: (1-alpha)*L_r + alpha*L_a; "
            "auto: mixed for cascade, pooled otherwise.",
            "choices": ["auto", "pooled", "mixed"],
        },
    )
    answer_first_marker: str = field(
        default="\nExplanation:",
        metadata={"help": "Marker between answer and rationale in answer_first; inference may stop there."},
    )
    compression_ratios: list[float] = field(
        default_factory=lambda: list(DEFAULT_RATIOS),
        metadata={
            "help": "compressed format: ratios g in (0, 1] (default TokenSkip's 0.5 0.6 0.7 0.8 0.9 1); each record "
            "is trained at one g, drawn by a stable hash of (seed, record id), the same across epochs and resumption."
        },
    )
    skip_invalid_records: bool = field(
        default=False,
        metadata={"help": "Skip and count invalid records (with their line numbers) instead of raising on the first one."},
    )
    overlong: str = field(
        default="error",
        metadata={
            "help": "A record longer than max_length: 'error' (stop, naming it), 'skip' (leave it out), "
            "'truncate_rationale' (shorten its rationale, keep the answer) or 'truncate' (cut at max_length, the "
            "answer too). The count is printed and logged.",
            "choices": list(OVERLONG_POLICIES),
        },
    )

    router_label_rule: str = field(
        default="answer_correct",
        metadata={
            "help": "adaptive format: how each training record's mode is labelled, from the starting student: "
            "'answer_correct' (answer first when its greedy answer with no rationale is right) or 'answer_loss' "
            "(answer first unless the rationale lowers the answer's loss by more than router_loss_margin).",
            "choices": list(LABEL_RULES),
        },
    )
    router_loss_margin: float = field(
        default=0.0,
        metadata={"help": "adaptive, router_label_rule answer_loss: nats per answer token the rationale must save."},
    )
    router_virtual_tokens: int = field(
        default=8, metadata={"help": "adaptive: soft-prompt (PEFT prompt tuning) length of the router."}
    )
    router_steps: int = field(default=100, metadata={"help": "adaptive: router training steps, after distillation."})
    router_learning_rate: float = field(default=1e-2, metadata={"help": "adaptive: router AdamW learning rate."})
    router_batch_size: int = field(default=8, metadata={"help": "adaptive: questions per router training step."})

    safety_monitor_every: int = field(
        default=0, metadata={"help": "Steps between safety checks (refusal, over-refusal during training); 0: off."}
    )
    safety_monitor_each_epoch: bool = field(default=False, metadata={"help": "Safety check at every epoch's end too."})
    safety_monitor_harmful: str | None = field(
        default=None, metadata={"help": "Safety monitor: harmful prompts (JSONL, 'question'); default AdvBench calibration."}
    )
    safety_monitor_benign: str | None = field(
        default=None, metadata={"help": "Safety monitor: benign prompts (JSONL, 'question'); default look-alike calibration."}
    )
    safety_monitor_prompts: int = field(default=16, metadata={"help": "Safety monitor: prompts per set."})
    safety_monitor_max_new_tokens: int = field(default=64, metadata={"help": "Safety monitor: tokens per response."})
    safety_monitor_policy: str = field(
        default="warn",
        metadata={"help": "Safety monitor, when refusal falls below start - tolerance: warn, stop or rollback.",
                  "choices": list(SAFETY_MONITOR_POLICIES)},
    )
    safety_monitor_tolerance: float = field(
        default=0.1, metadata={"help": "Safety monitor: largest drop of refusal below its start (share, in [0, 1])."}
    )
    safety_monitor_judge: str = field(default="default", metadata={"help": "Safety monitor: the refusal judge's name."})

    def __post_init__(self) -> None:
        if self.bf16 is None:
            import torch

            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        super().__post_init__()
        if self.distill_format not in FORMAT_NAMES:
            raise ValueError(f"distill_format must be one of {', '.join(FORMAT_NAMES)}, got '{self.distill_format}'")
        self.compression_ratios = _parse_ratios(self.compression_ratios)
        if not 0.0 <= self.cascade_alpha <= 1.0:
            raise ValueError(f"cascade_alpha must lie in [0, 1], got {self.cascade_alpha}")
        if self.segment_loss not in ("auto", "pooled", "mixed"):
            raise ValueError(f"segment_loss must be auto, pooled or mixed, got '{self.segment_loss}'")
        if self.router_label_rule not in LABEL_RULES:
            raise ValueError(f"router_label_rule must be one of {', '.join(LABEL_RULES)}, got '{self.router_label_rule}'")
        for name in ("router_virtual_tokens", "router_steps", "router_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.router_learning_rate < 1.0:
            raise ValueError(f"router_learning_rate must lie in (0, 1), got {self.router_learning_rate}")
        if self.overlong not in OVERLONG_POLICIES:
            raise ValueError(f"overlong must be one of {', '.join(OVERLONG_POLICIES)}, got '{self.overlong}'")
        if self.safety_monitor_policy not in SAFETY_MONITOR_POLICIES:
            raise ValueError(f"safety_monitor_policy must be one of {', '.join(SAFETY_MONITOR_POLICIES)}, "
                             f"got '{self.safety_monitor_policy}'")
        for name in ("safety_monitor_prompts", "safety_monitor_max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.safety_monitor_every) < 0:
            raise ValueError(f"safety_monitor_every must be >= 0 (0: off), got {self.safety_monitor_every}")
        if not 0.0 <= self.safety_monitor_tolerance <= 1.0:
            raise ValueError(f"safety_monitor_tolerance is a share of prompts in [0, 1], got {self.safety_monitor_tolerance}")

    @property
    def uses_mixed_loss(self) -> bool:
        """Whether the loss is CasCoD's two-term mix rather than one pooled token mean."""
        if self.segment_loss == "auto":
            return self.distill_format == "cascade"
        return self.segment_loss == "mixed"


def _parse_ratios(value) -> list[float]:
    """``compression_ratios`` as a list of floats in (0, 1]; a single number or ``"0.5,0.7"`` is accepted too."""
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, (int, float)) else value
    try:
        ratios = [float(g) for g in items]
    except (TypeError, ValueError):
        ratios = None
    if not ratios or any(isinstance(g, bool) for g in items) or not all(0.0 < g <= 1.0 for g in ratios):
        raise ValueError(
            "compression_ratios must be a non-empty list of numbers in (0, 1] (TokenSkip's set: "
            f"{', '.join(ratio_key(g) for g in DEFAULT_RATIOS)}), got {value!r}"
        )
    return ratios
