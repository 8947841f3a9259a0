"""Configuration of the SLowED methods (arXiv 2508.09666), low-entropy masking and slow tuning, and of the two
safety-preserving baselines beside them: Safe LoRA (arXiv 2405.16833) and AsFT (arXiv 2506.08473).

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
ALIGNMENT_PROJECTIONS = ("approximate", "exact")


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
        delta toward the anchor by `slow_tuning_pull` at every check, never above the budget) or `"direction"`
        (limit only the part of the delta inside the alignment subspace, so that it undoes at most the budget of the
        alignment delta `W_aligned - W_reference`; the orthogonal part is untouched; needs `slow_tuning_reference`).
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
    slow_tuning_direction_rank (`int`, *optional*, defaults to `0`):
        Rule `"direction"`: the alignment subspace is spanned by the top-k left singular vectors of each layer's
        alignment delta D. 0: full tensors use the full-matrix direction `D / ||D||`, LoRA layers D's numerical rank.
    slow_tuning_direction_dtype (`str`, *optional*, defaults to `"float32"`):
        Rule `"direction"`: dtype of the stored direction `D̂` / basis (`"bfloat16"` halves its memory, less exact).
    aligned_weights (`str` or `None`, *optional*, defaults to `None`):
        The aligned weights training starts from, in their saved precision (folder, `.safetensors`, `embedded-default`
        or hub id); default: the student's own `model_name_or_path`. Read where a base layer is quantized (slow
        tuning's reference quantities) and always by Safe LoRA and AsFT, so that no alignment delta is taken
        against an NF4/int8 copy.
    slow_tuning_pull (`float`, *optional*, defaults to `0.01`):
        `"scale"` rule: at every check the delta becomes `(1 - pull) * delta`.
    slow_tuning_check_every (`int`, *optional*, defaults to `1`):
        Check and correct every k optimizer steps (and at the end of each epoch).
    slow_tuning_include_1d (`bool`, *optional*, defaults to `False`):
        Also constrain trainable 1-D tensors (biases, norm weights) in full fine-tuning.
    slow_tuning_log_layers (`bool`, *optional*, defaults to `True`):
        Write per-layer drift of every checked step to `{output_dir}/slow_tuning_drift.jsonl`.

    > Safe LoRA (arXiv 2405.16833; `trl_safedistill.methods.safe_lora`)

    safe_lora (`bool`, *optional*, defaults to `False`):
        At the end of training, project the LoRA weights of the layers whose projected/unprojected similarity is at
        most `safe_lora_threshold` onto the alignment subspace of `V = W_aligned - W_unaligned` (LoRA and QLoRA).
    safe_lora_reference (`str` or `None`, *optional*, defaults to `None`):
        The unaligned weights (e.g. the base model of an instruct student); required with `safe_lora`.
    safe_lora_threshold (`float`, *optional*, defaults to `0.5`):
        Cosine similarity threshold tau (peft's `SafeLoraConfig` default).
    safe_lora_num_layers (`int`, *optional*, defaults to `0`):
        If > 0, project the n layers of lowest similarity instead (the paper's/peft's `select_layers_type="number"`).
    safe_lora_projection (`str`, *optional*, defaults to `"approximate"`):
        `"approximate"`: the paper's `C = V Vᵀ / ||V||_F`; `"exact"`: the orthogonal projector onto V's column space.

    > AsFT (arXiv 2506.08473; `trl_safedistill.methods.asft`)

    asft (`bool`, *optional*, defaults to `False`):
        Add AsFT's regulariser `asft_lambda * sum_layers ||(I - C) ΔW||_F²` to every optimizer step (LoRA and QLoRA).
    asft_reference (`str` or `None`, *optional*, defaults to `None`):
        The unaligned weights; required with `asft`.
    asft_lambda (`float`, *optional*, defaults to `1.0`):
        The regulariser's weight (the authors' released script uses 1).
    asft_projection (`str`, *optional*, defaults to `"approximate"`):
        `C` as in Safe LoRA: `"approximate"` (`V Vᵀ / ||V||_F`, the authors' code) or `"exact"`.
    asft_scaled_delta (`bool`, *optional*, defaults to `False`):
        `ΔW = s·B·A` (the update the layer adds) instead of `B·A` (the authors' code, without the LoRA scaling s).
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
            "'scale' (the delta W - W0 is multiplied by 1 - `slow_tuning_pull` at every check, and never exceeds the "
            "budget); 'direction' (the part of the delta inside the alignment subspace of D = W_aligned - W_reference "
            "is scaled down until it undoes at most the budget of D; the orthogonal part is untouched; needs "
            "`slow_tuning_reference`; see methods/slow_tuning/rules.py).",
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
    slow_tuning_direction_rank: int = field(
        default=0,
        metadata={
            "help": "Rule 'direction': k, the alignment subspace of each layer is spanned by the top-k left singular "
            "vectors of its alignment delta D = W_aligned - W_reference. 0 (default): full tensors use the full-matrix "
            "direction D/||D|| (exact), LoRA layers the numerical rank of D (for a merged rank-r LoRA alignment, r)."
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
    aligned_weights: str | None = field(
        default=None,
        metadata={
            "help": "The aligned weights training starts from, in their saved precision (folder, .safetensors, "
            "`embedded-default` or hub id); default: the student's own model_name_or_path. Read for layers on a "
            "quantized (4-bit/8-bit) base by slow tuning, and always by Safe LoRA and AsFT: an alignment delta is "
            "never taken against the NF4/int8 copy."
        },
    )

    # ---- Safe LoRA (arXiv 2405.16833) ------------------------------------------------------------------------
    safe_lora: bool = field(
        default=False,
        metadata={
            "help": "Safe LoRA: at the end of training, replace B by C·B in every LoRA layer whose cosine similarity "
            "between C·B·A and B·A is at most `safe_lora_threshold`, C the projection onto the alignment matrix "
            "V = W_aligned - W_unaligned (`safe_lora_reference`). Post-hoc, LoRA/QLoRA only."
        },
    )
    safe_lora_reference: str | None = field(
        default=None,
        metadata={"help": "Safe LoRA: the unaligned weights W_unaligned (folder, .safetensors, embedded-default, hub id)."},
    )
    safe_lora_threshold: float = field(
        default=0.5,
        metadata={"help": "Safe LoRA: similarity threshold tau in [-1, 1] (peft's SafeLoraConfig default 0.5)."},
    )
    safe_lora_num_layers: int = field(
        default=0,
        metadata={"help": "Safe LoRA: if > 0, project the n layers of lowest similarity instead of using the threshold."},
    )
    safe_lora_projection: str = field(
        default="approximate",
        metadata={
            "help": "Safe LoRA's C: 'approximate' = V Vᵀ / ||V||_F (the paper's and its code's), 'exact' = the "
            "orthogonal projector onto V's column space (numerical rank).",
            "choices": list(ALIGNMENT_PROJECTIONS),
        },
    )

    # ---- AsFT (arXiv 2506.08473) -----------------------------------------------------------------------------
    asft: bool = field(
        default=False,
        metadata={
            "help": "AsFT: add asft_lambda * sum over LoRA layers of ||(I - C) ΔW||_F² to each optimizer step's "
            "objective (the update's component outside the alignment subspace; `asft_reference`). LoRA/QLoRA only."
        },
    )
    asft_reference: str | None = field(
        default=None,
        metadata={"help": "AsFT: the unaligned weights W_unaligned (folder, .safetensors, embedded-default, hub id)."},
    )
    asft_lambda: float = field(
        default=1.0,
        metadata={"help": "AsFT: weight of the regulariser (the authors' released script: 1)."},
    )
    asft_projection: str = field(
        default="approximate",
        metadata={
            "help": "AsFT's C: 'approximate' = V Vᵀ / ||V||_F (the authors' code), 'exact' = the orthogonal projector.",
            "choices": list(ALIGNMENT_PROJECTIONS),
        },
    )
    asft_scaled_delta: bool = field(
        default=False,
        metadata={"help": "AsFT: penalise s·B·A (the layer's update) instead of B·A (the authors' code omits s)."},
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
    if args.slow_tuning_direction_rank < 0:
        raise ValueError(f"slow_tuning_direction_rank must be >= 0 (0: numerical rank), got {args.slow_tuning_direction_rank}")
    for name in ("safe_lora", "asft"):
        if getattr(args, name) and not getattr(args, f"{name}_reference"):
            raise ValueError(f"{name}=True needs {name}_reference (the unaligned weights, e.g. the student's base model)")
        if getattr(args, f"{name}_projection") not in ALIGNMENT_PROJECTIONS:
            raise ValueError(f"{name}_projection must be one of {ALIGNMENT_PROJECTIONS}, got {getattr(args, f'{name}_projection')!r}")
    if not -1.0 <= args.safe_lora_threshold <= 1.0:
        raise ValueError(f"safe_lora_threshold is a cosine similarity in [-1, 1], got {args.safe_lora_threshold}")
    if args.safe_lora_num_layers < 0:
        raise ValueError(f"safe_lora_num_layers must be >= 0 (0: use safe_lora_threshold), got {args.safe_lora_num_layers}")
    if args.asft_lambda < 0:
        raise ValueError(f"asft_lambda must be >= 0, got {args.asft_lambda}")
