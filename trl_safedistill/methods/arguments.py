"""Configuration of the SLowED methods (arXiv 2508.09666): low-entropy masking and slow tuning.

:class:`SLowEDArguments` holds every knob of both modules, with defaults, so that
``SafeDistillConfig(SFTConfig)`` can inherit from it (all names are prefixed ``entropy_mask_`` or
``slow_tuning_`` and do not clash with ``SFTConfig`` / ``TrainingArguments``). Both methods are off by
default: a ``SafeDistillConfig`` with default values trains exactly like ``SFTConfig``.

The paper gives neither the entropy threshold nor the slow-tuning rule (no public code); every such
detail below is this project's choice and is marked as such in the help texts (see
``../shared/REFERENCE.md`` section 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

ENTROPY_MASK_MODES = ("off", "threshold", "fraction")
SLOW_TUNING_RULES = ("off", "project", "scale", "direction")
SLOW_TUNING_UNITS = ("weight", "reference")
SLOW_TUNING_REFERENCE_MISSING = ("skip", "freeze")


@dataclass
class SLowEDArguments:
    r"""
    Parameters of SLowED's two modules (arXiv 2508.09666). Details the paper leaves open are this project's choice.

    > Low-entropy masking

    entropy_mask_mode (`str`, *optional*, defaults to `"off"`):
        `"off"`, `"threshold"` (mask target tokens whose student entropy is below `entropy_mask_threshold` nats) or
        `"fraction"` (mask the lowest `entropy_mask_quantile` fraction of the maskable target tokens of the batch,
        gathered across processes like `GRPOTrainer.get_high_entropy_mask`).
    entropy_mask_threshold (`float`, *optional*, defaults to `0.2`):
        Threshold in nats for `"threshold"` mode. 0.2 nats is the binary entropy of a 95/5 split: below it the
        student already puts more than 95% of its mass on one token (project's choice).
    entropy_mask_quantile (`float`, *optional*, defaults to `0.5`):
        Fraction `q` for `"fraction"` mode: tokens with entropy below the `q`-quantile are masked, i.e. this is
        `1 - GRPOConfig.top_entropy_quantile`. 0.5 is the setting measured in REFERENCE.md section 1.
    entropy_mask_protect_answer (`bool`, *optional*, defaults to `True`):
        Never mask answer tokens (segment 2); the quantile is then taken over rationale tokens only.
    entropy_mask_min_keep (`int`, *optional*, defaults to `1`):
        Per-example floor: an example keeps at least this many target tokens (its highest-entropy ones).
    entropy_mask_only_top1 (`bool`, *optional*, defaults to `False`):
        Mask a low-entropy token only when the target is also the student's top-1 prediction (needs `is_top1`).

    > Slow tuning

    slow_tuning_rule (`str`, *optional*, defaults to `"off"`):
        `"off"`, `"project"` (rescale each layer's delta onto the drift budget when exceeded), `"scale"` (pull the
        delta toward the anchor by `slow_tuning_pull` at every check) or `"direction"` (limit only the component of
        the delta that undoes the alignment delta `W0 - W_reference`; needs `slow_tuning_reference`).
    slow_tuning_budget (`float`, *optional*, defaults to `0.01`):
        Drift budget in epoch 0, as a fraction of the unit (`slow_tuning_unit`).
    slow_tuning_budget_growth (`float`, *optional*, defaults to `1.0`):
        Budget of epoch `e` is `slow_tuning_budget * slow_tuning_budget_growth**e`.
    slow_tuning_unit (`str`, *optional*, defaults to `"weight"`):
        `"weight"`: drift relative to `||W0||_F`; `"reference"`: relative to `||W0 - W_reference||_F` per layer.
    slow_tuning_reference (`str` or `None`, *optional*, defaults to `None`):
        Folder, `.safetensors` file or hub model id of the reference weights, e.g. the model before safety
        alignment (for an instruct student, its base model).
    slow_tuning_reference_missing (`str`, *optional*, defaults to `"skip"`):
        Layers with no (or a zero) reference delta are left unconstrained (`"skip"`) or pinned to W0 (`"freeze"`).
    slow_tuning_direction_dtype (`str`, *optional*, defaults to `"float32"`):
        Rule `"direction"`: dtype of the stored direction `D̂` (`"bfloat16"` halves its memory, less exact).
    slow_tuning_pull (`float`, *optional*, defaults to `0.01`):
        `"scale"` rule: at every check the delta becomes `(1 - pull) * delta`.
    slow_tuning_check_every (`int`, *optional*, defaults to `1`):
        Check and correct every k optimizer steps (and at the end of each epoch).
    slow_tuning_include_1d (`bool`, *optional*, defaults to `False`):
        Also constrain trainable 1-D tensors (biases, norm weights) in full fine-tuning.
    slow_tuning_log_layers (`bool`, *optional*, defaults to `True`):
        Write per-layer drift of every checked step to `{output_dir}/slow_tuning_drift.jsonl`.
    """

    # ---- low-entropy masking -------------------------------------------------------------------------------
    entropy_mask_mode: str = field(
        default="off",
        metadata={
            "help": "Low-entropy masking (SLowED): 'off', 'threshold' (mask target tokens whose student entropy is "
            "below `entropy_mask_threshold` nats) or 'fraction' (mask the lowest `entropy_mask_quantile` fraction "
            "of the batch's maskable target tokens, gathered across processes as GRPOTrainer.get_high_entropy_mask "
            "does).",
            "choices": list(ENTROPY_MASK_MODES),
        },
    )
    entropy_mask_threshold: float = field(
        default=0.2,
        metadata={
            "help": "Entropy threshold in nats for mode 'threshold'. Default 0.2 nats = binary entropy of a 95/5 "
            "split: below it the student puts more than 95 percent of its mass on one token (this project's choice)."
        },
    )
    entropy_mask_quantile: float = field(
        default=0.5,
        metadata={
            "help": "For mode 'fraction': tokens with entropy below this quantile of the batch's maskable target "
            "tokens are masked (= 1 - GRPOConfig.top_entropy_quantile). Range [0, 1]; 0 masks nothing. Default 0.5 "
            "(the setting measured in REFERENCE.md section 1; this project's choice)."
        },
    )
    entropy_mask_protect_answer: bool = field(
        default=True,
        metadata={
            "help": "Never mask answer tokens (segment 2); the 'fraction' quantile is then taken over rationale "
            "tokens only."
        },
    )
    entropy_mask_min_keep: int = field(
        default=1,
        metadata={
            "help": "Per-example floor: each example keeps at least this many target tokens (its highest-entropy "
            "ones), so no example loses all of its targets."
        },
    )
    entropy_mask_only_top1: bool = field(
        default=False,
        metadata={
            "help": "Mask a low-entropy token only if the target is also the student's top-1 prediction (a "
            "confidently wrong token stays a learning target). Needs `is_top1` from the fused LM head. This "
            "project's extension."
        },
    )

    # ---- slow tuning ---------------------------------------------------------------------------------------
    slow_tuning_rule: str = field(
        default="off",
        metadata={
            "help": "Slow tuning (SLowED; the rule is this project's choice): 'off'; 'project' (after each check, a "
            "layer whose drift ||W - W0||_F / unit exceeds the budget has its delta rescaled onto the budget); "
            "'scale' (the delta W - W0 is multiplied by 1 - `slow_tuning_pull` at every check: a pull toward the "
            "anchor); 'direction' (only the component of the delta along -(W0 - W_reference) is limited to the "
            "budget; needs `slow_tuning_reference`).",
            "choices": list(SLOW_TUNING_RULES),
        },
    )
    slow_tuning_budget: float = field(
        default=0.01,
        metadata={
            "help": "Drift budget of epoch 0 as a fraction of the unit (`slow_tuning_unit`): 0.01 = 1 percent of ||W0||_F "
            "per layer (or 1 percent of the layer's reference delta). Needs calibration by a sweep (REFERENCE.md s.1)."
        },
    )
    slow_tuning_budget_growth: float = field(
        default=1.0,
        metadata={"help": "Per-epoch budget schedule: budget_e = slow_tuning_budget * slow_tuning_budget_growth**e."},
    )
    slow_tuning_unit: str = field(
        default="weight",
        metadata={
            "help": "Unit of the drift and budget: 'weight' (||W0||_F of the layer's effective weight at the start "
            "of training) or 'reference' (||W0 - W_reference||_F per layer, W_reference read from "
            "`slow_tuning_reference`).",
            "choices": list(SLOW_TUNING_UNITS),
        },
    )
    slow_tuning_reference: str | None = field(
        default=None,
        metadata={
            "help": "Reference weights (a model folder or checkpoint with safetensors, one .safetensors file, "
            "`embedded-default`, or a hub model id, fetched once), e.g. the model before safety alignment (for an "
            "instruct student: its base model); tensors are matched by name. Used by unit 'reference' and rule "
            "'direction'."
        },
    )
    slow_tuning_reference_missing: str = field(
        default="skip",
        metadata={
            "help": "Layers absent from the reference or with a zero reference delta: 'skip' (unconstrained) or "
            "'freeze' (budget 0: pinned to W0).",
            "choices": list(SLOW_TUNING_REFERENCE_MISSING),
        },
    )
    slow_tuning_direction_dtype: str = field(
        default="float32",
        metadata={
            "help": "Rule 'direction': dtype of the stored unit alignment direction D̂ (one copy of every "
            "constrained weight on its device). 'bfloat16' halves that memory but the limit then holds only up to "
            "about 2^-8 * ||W - W0|| / ||D|| (the rounding of D̂).",
            "choices": ["float32", "bfloat16"],
        },
    )
    slow_tuning_pull: float = field(
        default=0.01,
        metadata={"help": "Rule 'scale': at every check the delta W - W0 becomes (1 - slow_tuning_pull)(W - W0)."},
    )
    slow_tuning_check_every: int = field(
        default=1,
        metadata={
            "help": "Check (and correct) the drift every k optimizer steps and at the end of each epoch. Between "
            "checks the drift can exceed the budget by at most the norm of the k - 1 unchecked updates."
        },
    )
    slow_tuning_include_1d: bool = field(
        default=False,
        metadata={"help": "Also constrain trainable 1-D tensors (biases, norm weights), not only weight matrices."},
    )
    slow_tuning_log_layers: bool = field(
        default=True,
        metadata={"help": "Write every checked step's per-layer drift to `{output_dir}/slow_tuning_drift.jsonl`."},
    )

    def __post_init__(self):
        if hasattr(super(), "__post_init__"):
            super().__post_init__()
        validate_slowed_arguments(self)


def validate_slowed_arguments(args: SLowEDArguments) -> None:
    """Raise ``ValueError`` on an inconsistent SLowED configuration (called by ``__post_init__``)."""
    if args.entropy_mask_mode not in ENTROPY_MASK_MODES:
        raise ValueError(f"entropy_mask_mode must be one of {ENTROPY_MASK_MODES}, got {args.entropy_mask_mode!r}")
    if not 0.0 <= args.entropy_mask_quantile <= 1.0:
        raise ValueError(f"entropy_mask_quantile must be in [0, 1], got {args.entropy_mask_quantile}")
    if args.entropy_mask_threshold < 0:
        raise ValueError(f"entropy_mask_threshold must be >= 0 nats, got {args.entropy_mask_threshold}")
    if args.entropy_mask_min_keep < 0:
        raise ValueError(f"entropy_mask_min_keep must be >= 0, got {args.entropy_mask_min_keep}")
    if args.slow_tuning_rule not in SLOW_TUNING_RULES:
        raise ValueError(f"slow_tuning_rule must be one of {SLOW_TUNING_RULES}, got {args.slow_tuning_rule!r}")
    if args.slow_tuning_unit not in SLOW_TUNING_UNITS:
        raise ValueError(f"slow_tuning_unit must be one of {SLOW_TUNING_UNITS}, got {args.slow_tuning_unit!r}")
    if args.slow_tuning_reference_missing not in SLOW_TUNING_REFERENCE_MISSING:
        raise ValueError(
            f"slow_tuning_reference_missing must be one of {SLOW_TUNING_REFERENCE_MISSING}, "
            f"got {args.slow_tuning_reference_missing!r}"
        )
    needs_reference = args.slow_tuning_rule == "direction" or (
        args.slow_tuning_rule != "off" and args.slow_tuning_unit == "reference"
    )
    if needs_reference and not args.slow_tuning_reference:
        raise ValueError(f"slow_tuning_rule={args.slow_tuning_rule!r} with slow_tuning_unit={args.slow_tuning_unit!r} "
                         "needs slow_tuning_reference (the weights before safety alignment)")
    if args.slow_tuning_budget < 0:
        raise ValueError(f"slow_tuning_budget must be >= 0, got {args.slow_tuning_budget}")
    if args.slow_tuning_budget_growth <= 0:
        raise ValueError(f"slow_tuning_budget_growth must be > 0, got {args.slow_tuning_budget_growth}")
    if not 0.0 <= args.slow_tuning_pull <= 1.0:
        raise ValueError(f"slow_tuning_pull must be in [0, 1], got {args.slow_tuning_pull}")
    if args.slow_tuning_direction_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"slow_tuning_direction_dtype must be float32 or bfloat16, got {args.slow_tuning_direction_dtype}")
    if args.slow_tuning_check_every < 1:
        raise ValueError(f"slow_tuning_check_every must be >= 1, got {args.slow_tuning_check_every}")
