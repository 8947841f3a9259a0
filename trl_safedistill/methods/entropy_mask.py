r"""Low-entropy masking (SLowED, arXiv 2508.09666): drop the student's near-certain tokens from the loss.

SLowED "masks low-entropy tokens, which are regarded as unnecessary learning targets". Whose entropy and
which threshold are not given (OPEN); this project's choice is the student's own predictive entropy at each
target position, taken from TRL's fused LM head (``model(..., fused_lm_head=True)`` returns ``entropy`` per
position, no B·T·V tensor and no extra forward pass)::

    H_t = - sum_v p(v | x_<t) log p(v | x_<t)      (nats)

and a target token t is *kept* when

* mode ``threshold``: ``H_t >= entropy_mask_threshold``;
* mode ``fraction``:  ``H_t >= quantile({H_s : s maskable target token of the batch}, entropy_mask_quantile)``,
  the operation of ``trl.GRPOTrainer.get_high_entropy_mask`` with quantile ``q = entropy_mask_quantile``
  (``= 1 - GRPOConfig.top_entropy_quantile``): ``torch.quantile`` (linear interpolation) over the entropies,
  ties at the threshold kept. With an ``accelerator`` running several processes the entropies are
  gathered first (``pad_across_processes`` with a negative sentinel + ``gather``), so the threshold is
  identical on every rank. Each call is then a collective: every rank must call it the same number of times
  (true in a DDP training step, where accelerate gives every rank the same number of micro-batches).

  **The batch is the optimizer step** (the rule SafeDistillTrainer follows): the pool is every maskable target
  token of every micro-batch of the gradient-accumulation window, on every rank, i.e. the same tokens whose
  kept count normalises the loss. With one micro-batch per step the training forward's entropies are that
  pool (:func:`low_entropy_keep_mask` gathers them); with several, the trainer's no-grad pre-pass computes
  every micro-batch's entropies first, :func:`window_threshold` takes the quantile once over all of them,
  and :func:`low_entropy_keep_mask` applies it (``threshold=``, no collective). So the keep bits of a step
  depend only on its global batch, not on how it is split into micro-batches and processes
  (``2 processes x 1 sequence x 2 accumulation steps`` masks what ``1 process x 4 sequences`` masks; tested
  with a real two-process run in ``tests/test_multiprocess.py``);
* mode ``off``: every target token is kept.

Then:

* ``entropy_mask_protect_answer`` (default True): answer tokens (``Segment.ANSWER`` = 2) are always kept
  and do not enter the quantile (the fraction is then a fraction of the rationale tokens);
* ``entropy_mask_only_top1`` (default False, this project's extension): a low-entropy token is masked only
  if the target is the student's top-1 prediction (``is_top1`` from the fused head);
* per-example floor ``entropy_mask_min_keep = k`` (default 1): an example whose kept targets number fewer
  than ``min(k, n_targets)`` gets its ``k`` highest-entropy target tokens back, so no example loses all of
  its targets (and its loss term never becomes 0/0).

Defaults (this project's choice): mode ``off`` (SafeDistillConfig trains like SFTConfig unless asked);
threshold 0.2 nats (the binary entropy of a 95/5 split: for a top-1 probability p >= 1/2 the entropy is at
least the binary entropy h(p), so H < 0.2 implies the student already puts > 95% on one token); quantile
0.5 (the setting measured in REFERENCE.md section 1, comparable across models since it is scale-free).

The caller (SafeDistillTrainer) multiplies the per-token loss by the keep mask and normalises by the kept
tokens (per segment); this module only builds the mask.
"""

from __future__ import annotations

from typing import Any

import torch

from .arguments import SLowEDArguments

ANSWER_SEGMENT = 2  # trl_safedistill.formats.base.Segment.ANSWER
_SENTINEL = -1e9  # entropies are >= 0, so a negative pad value cannot collide (as in GRPOTrainer)


def gather_entropies(values: torch.Tensor, accelerator: Any = None) -> torch.Tensor:
    """1-D float tensor of ``values`` from every process (GRPO's pattern); only local values without one."""
    values = values.float()
    if accelerator is None or getattr(accelerator, "num_processes", 1) <= 1:
        return values
    padded = accelerator.pad_across_processes(values, dim=0, pad_index=_SENTINEL)
    gathered = accelerator.gather(padded)
    return gathered[gathered != _SENTINEL]


def entropy_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values, q)`` (linear interpolation), also for inputs above torch.quantile's 2**24 limit."""
    if values.numel() <= 2**24:
        return torch.quantile(values, q)
    ordered, _ = torch.sort(values)
    pos = q * (ordered.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, ordered.numel() - 1)
    return ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo])


def maskable_targets(target_mask: torch.Tensor, segment_ids: torch.Tensor, args: SLowEDArguments) -> torch.Tensor:
    """Target tokens that may be masked: every target, less the answer tokens when ``entropy_mask_protect_answer``."""
    target = target_mask.bool()
    if args.entropy_mask_protect_answer:
        return target & (segment_ids != ANSWER_SEGMENT)
    return target


def window_threshold(
    entropies: list[torch.Tensor],
    target_masks: list[torch.Tensor],
    segment_ids: list[torch.Tensor],
    args: SLowEDArguments,
    accelerator: Any = None,
) -> float:
    """Mode ``fraction``'s threshold for one optimizer step: the ``entropy_mask_quantile`` of the maskable target
    entropies of all its micro-batches (one ``(B, T)`` tensor each, as for :func:`low_entropy_keep_mask`) and, with
    an ``accelerator`` on several processes, of every rank (one collective per call). ``-inf`` (nothing masked)
    when there is no maskable token or the quantile is 0. Pass it to :func:`low_entropy_keep_mask` as ``threshold``.
    """
    pool = torch.cat(
        [ent.detach().float()[maskable_targets(t, s, args)].flatten() for ent, t, s in zip(entropies, target_masks, segment_ids)]
    )
    pool = gather_entropies(pool, accelerator)
    if pool.numel() == 0 or args.entropy_mask_quantile <= 0.0:
        return float("-inf")
    return float(entropy_quantile(pool, float(args.entropy_mask_quantile)))


def _apply_floor(keep: torch.Tensor, entropy: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Give each example whose kept count is below ``min(k, n_targets)`` its ``k`` highest-entropy targets."""
    if k <= 0:
        return keep
    n_kept = keep.sum(dim=1)
    n_target = target.sum(dim=1)
    short = n_kept < torch.clamp(n_target, max=k)
    if not bool(short.any()):
        return keep
    k_eff = min(k, entropy.shape[1])
    scores = torch.where(target, entropy.float(), torch.full_like(entropy, float("-inf"), dtype=torch.float32))
    top = torch.topk(scores, k_eff, dim=1).indices
    floor = torch.zeros_like(keep)
    floor.scatter_(1, top, True)
    floor &= target
    return torch.where(short.unsqueeze(1), keep | floor, keep)


def low_entropy_keep_mask(
    entropy: torch.Tensor,
    target_mask: torch.Tensor,
    segment_ids: torch.Tensor,
    args: SLowEDArguments,
    accelerator: Any = None,
    is_top1: torch.Tensor | None = None,
    threshold: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Which target tokens stay in the loss, and statistics for logging.

    Args:
        entropy: ``(B, T)`` student entropy in nats per target position (fused LM head ``entropy``).
        target_mask: ``(B, T)`` bool, True where the position is a target (fused head ``label_mask``).
        segment_ids: ``(B, T)`` long, :class:`~trl_safedistill.formats.base.Segment` of each position, aligned
            with ``entropy`` (0 prompt, 1 rationale, 2 answer).
        args: the :class:`SLowEDArguments` (or ``SafeDistillConfig``): ``entropy_mask_*`` fields.
        accelerator: an ``accelerate.Accelerator``; with several processes the ``fraction`` quantile is over
            the gathered entropies of all processes (a collective call). ``None``: this process only.
        is_top1: ``(B, T)`` bool, fused head ``is_top1``; needed only with ``entropy_mask_only_top1``.
        threshold: mode ``fraction`` only: the step's threshold from :func:`window_threshold`, used as is (no
            quantile, no collective; ``-inf`` masks nothing). ``None``: the quantile of this batch (gathered).

    Returns:
        ``keep``: ``(B, T)`` bool, True on target tokens that stay in the loss, False on non-targets.
        ``stats`` (local to this process, floats): ``masked_fraction`` (masked / target tokens),
        ``entropy_kept_mean``, ``entropy_masked_mean`` (0.0 when the set is empty), ``entropy_threshold``
        (the threshold used, nan in mode off), and the raw sums for exact aggregation over micro-batches:
        ``n_target``, ``n_masked``, ``entropy_kept_sum``, ``entropy_masked_sum``.

    The formulas, modes and defaults are described in the module docstring.
    """
    if entropy.shape != target_mask.shape or segment_ids.shape != target_mask.shape:
        raise ValueError(
            f"entropy {tuple(entropy.shape)}, target_mask {tuple(target_mask.shape)} and segment_ids "
            f"{tuple(segment_ids.shape)} must have the same shape"
        )
    target = target_mask.bool()
    ent = entropy.detach().float()
    mode = args.entropy_mask_mode
    maskable = maskable_targets(target, segment_ids, args)

    given, threshold = threshold, float("nan")
    if mode == "off":
        low = torch.zeros_like(target)
    elif mode == "threshold":
        threshold = float(args.entropy_mask_threshold)
        low = maskable & (ent < threshold)
    elif mode == "fraction" and given is not None:
        low = maskable & (ent < given)
        threshold = float(given) if given > float("-inf") else float("nan")
    elif mode == "fraction":
        pool = gather_entropies(ent[maskable], accelerator)
        if pool.numel() == 0 or args.entropy_mask_quantile <= 0.0:
            low = torch.zeros_like(target)
        else:
            thr = entropy_quantile(pool, float(args.entropy_mask_quantile))
            threshold = float(thr)
            low = maskable & (ent < thr)
    else:
        raise ValueError(f"unknown entropy_mask_mode {mode!r}")

    if args.entropy_mask_only_top1 and mode != "off":
        if is_top1 is None:
            raise ValueError("entropy_mask_only_top1=True needs is_top1 from the fused LM head")
        low &= is_top1.bool()

    keep = target & ~low
    keep = _apply_floor(keep, ent, target, int(args.entropy_mask_min_keep))
    masked = target & ~keep

    n_target = int(target.sum())
    n_masked = int(masked.sum())
    kept_sum = float(ent[keep].sum())
    masked_sum = float(ent[masked].sum())
    n_kept = n_target - n_masked
    stats = {
        "masked_fraction": n_masked / n_target if n_target else 0.0,
        "entropy_kept_mean": kept_sum / n_kept if n_kept else 0.0,
        "entropy_masked_mean": masked_sum / n_masked if n_masked else 0.0,
        "entropy_threshold": threshold,
        "n_target": float(n_target),
        "n_masked": float(n_masked),
        "entropy_kept_sum": kept_sum,
        "entropy_masked_sum": masked_sum,
    }
    return keep, stats
