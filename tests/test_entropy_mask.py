"""Low-entropy masking: exact masks on a constructed batch with known entropies, in every mode."""

from __future__ import annotations

import pytest
import torch

from trl_safedistill.methods.arguments import SLowEDArguments
from trl_safedistill.methods.entropy_mask import low_entropy_keep_mask

# Two examples, 8 positions. Prompt (segment 0, not a target), rationale (1), answer (2), padding (0, no target).
ENTROPY = torch.tensor(
    [
        [9.0, 9.0, 0.05, 1.50, 0.10, 2.00, 0.01, 0.30],
        [9.0, 0.02, 0.03, 0.04, 0.01, 0.00, 0.00, 0.00],
    ]
)
SEGMENTS = torch.tensor(
    [
        [0, 0, 1, 1, 1, 1, 2, 2],
        [0, 1, 1, 1, 2, 0, 0, 0],
    ]
)
TARGET = SEGMENTS > 0


def args(**kw) -> SLowEDArguments:
    base = {"entropy_mask_protect_answer": False, "entropy_mask_min_keep": 0}
    base.update(kw)
    return SLowEDArguments(**base)


def masked_positions(keep: torch.Tensor) -> list[tuple[int, int]]:
    return [tuple(x) for x in (TARGET & ~keep).nonzero().tolist()]


def test_off_keeps_every_target_and_nothing_else():
    keep, stats = low_entropy_keep_mask(ENTROPY, TARGET, SEGMENTS, args(entropy_mask_mode="off"))
    assert torch.equal(keep, TARGET)
    assert stats["masked_fraction"] == 0.0
    assert stats["n_target"] == 10


def test_threshold_masks_exactly_the_tokens_below():
    keep, stats = low_entropy_keep_mask(
        ENTROPY, TARGET, SEGMENTS, args(entropy_mask_mode="threshold", entropy_mask_threshold=0.2)
    )
    expected = [(0, 2), (0, 4), (0, 6), (1, 1), (1, 2), (1, 3), (1, 4)]
    assert masked_positions(keep) == expected
    assert not (keep & ~TARGET).any()
    assert stats["masked_fraction"] == pytest.approx(7 / 10)
    assert stats["entropy_kept_mean"] == pytest.approx((1.5 + 2.0 + 0.3) / 3)
    assert stats["entropy_masked_mean"] == pytest.approx((0.05 + 0.10 + 0.01 + 0.02 + 0.03 + 0.04 + 0.01) / 7)


def test_fraction_follows_grpo_quantile():
    # 10 target entropies sorted: .01 .01 .02 .03 .04 .05 .10 .30 1.5 2.0; quantile(0.3): pos 2.7 -> .02 + .7 * .01
    keep, stats = low_entropy_keep_mask(
        ENTROPY, TARGET, SEGMENTS, args(entropy_mask_mode="fraction", entropy_mask_quantile=0.3)
    )
    assert stats["entropy_threshold"] == pytest.approx(0.027)
    assert masked_positions(keep) == [(0, 6), (1, 1), (1, 4)]
    assert stats["masked_fraction"] == pytest.approx(0.3)
    # q = 0.5: pos 4.5 -> threshold .045 masks the 5 lowest
    keep, stats = low_entropy_keep_mask(ENTROPY, TARGET, SEGMENTS, args(entropy_mask_mode="fraction"))
    assert stats["entropy_threshold"] == pytest.approx(0.045)
    assert masked_positions(keep) == [(0, 6), (1, 1), (1, 2), (1, 3), (1, 4)]
    # q = 0 masks nothing
    keep, _ = low_entropy_keep_mask(
        ENTROPY, TARGET, SEGMENTS, args(entropy_mask_mode="fraction", entropy_mask_quantile=0.0)
    )
    assert torch.equal(keep, TARGET)


def test_answer_protection_keeps_answers_and_quantile_is_over_rationale():
    a = args(entropy_mask_mode="threshold", entropy_mask_protect_answer=True)
    keep, _ = low_entropy_keep_mask(ENTROPY, TARGET, SEGMENTS, a)
    assert keep[SEGMENTS == 2].all()
    assert masked_positions(keep) == [(0, 2), (0, 4), (1, 1), (1, 2), (1, 3)]
    # fraction over the 7 rationale entropies .02 .03 .04 .05 .10 1.5 2.0: q=0.5 -> .05 (ties kept)
    a = args(entropy_mask_mode="fraction", entropy_mask_quantile=0.5, entropy_mask_protect_answer=True)
    keep, stats = low_entropy_keep_mask(ENTROPY, TARGET, SEGMENTS, a)
    assert stats["entropy_threshold"] == pytest.approx(0.05)
    assert masked_positions(keep) == [(1, 1), (1, 2), (1, 3)]


def test_per_example_floor_keeps_highest_entropy_targets():
    a = args(entropy_mask_mode="threshold", entropy_mask_threshold=10.0, entropy_mask_min_keep=2)
    keep, _ = low_entropy_keep_mask(ENTROPY, TARGET, SEGMENTS, a)
    assert keep.sum(dim=1).tolist() == [2, 2]
    assert keep[0].nonzero().flatten().tolist() == [3, 5]  # 1.5 and 2.0
    assert keep[1].nonzero().flatten().tolist() == [2, 3]  # .03 and .04
    # an example with a single target keeps it even with k = 5
    a = args(entropy_mask_mode="threshold", entropy_mask_threshold=10.0, entropy_mask_min_keep=5)
    one = torch.tensor([[0, 1, 0]])
    keep, _ = low_entropy_keep_mask(torch.tensor([[1.0, 0.0, 2.0]]), one > 0, one, a)
    assert keep.tolist() == [[False, True, False]]


def test_only_top1_spares_confidently_wrong_tokens():
    is_top1 = torch.ones_like(TARGET)
    is_top1[0, 2] = False  # low entropy, but the target is not the student's prediction
    a = args(entropy_mask_mode="threshold", entropy_mask_only_top1=True)
    keep, _ = low_entropy_keep_mask(ENTROPY, TARGET, SEGMENTS, a, is_top1=is_top1)
    assert keep[0, 2] and not keep[0, 4]


def test_fraction_gathers_across_processes():
    class FakeAccelerator:
        """Two processes: the other one contributes entropies 0.5 and 0.6 (plus padding)."""

        num_processes = 2

        def pad_across_processes(self, t, dim=0, pad_index=0):
            return torch.cat([t, torch.full((2,), pad_index)])

        def gather(self, t):
            return torch.cat([t, torch.tensor([0.5, 0.6] + [-1e9] * (t.numel() - 2))])

    a = args(entropy_mask_mode="fraction", entropy_mask_quantile=0.9)
    keep, stats = low_entropy_keep_mask(ENTROPY, TARGET, SEGMENTS, a, accelerator=FakeAccelerator())
    pool = torch.tensor([0.05, 1.5, 0.10, 2.0, 0.01, 0.30, 0.02, 0.03, 0.04, 0.01, 0.5, 0.6])
    assert stats["entropy_threshold"] == pytest.approx(float(torch.quantile(pool, 0.9)))
    # 12 values, q = 0.9: pos 9.9 -> .6 + .9 * (1.5 - .6) = 1.41: only 1.5 and 2.0 survive locally
    assert stats["entropy_threshold"] == pytest.approx(1.41)
    assert masked_positions(keep) == [(0, 2), (0, 4), (0, 6), (0, 7), (1, 1), (1, 2), (1, 3), (1, 4)]


def test_arguments_combine_with_sftconfig():
    import dataclasses

    from trl import SFTConfig

    ours = {f.name for f in dataclasses.fields(SLowEDArguments)}
    assert not ours & {f.name for f in dataclasses.fields(SFTConfig)}
    assert all(f.metadata.get("help") for f in dataclasses.fields(SLowEDArguments))

    @dataclasses.dataclass
    class Combined(SLowEDArguments, SFTConfig):
        pass

    config = Combined(output_dir="unused", entropy_mask_mode="fraction", slow_tuning_rule="project", bf16=False)
    assert config.entropy_mask_quantile == 0.5 and config.max_length == 1024
    with pytest.raises(ValueError, match="entropy_mask_mode"):
        Combined(output_dir="unused", entropy_mask_mode="sometimes", bf16=False)
    with pytest.raises(ValueError, match="slow_tuning_reference"):
        SLowEDArguments(slow_tuning_rule="direction")


def test_window_threshold_is_one_quantile_over_every_micro_batch():
    """Two micro-batches of one optimizer step mask exactly what their concatenation masks (the trainer's rule)."""
    from trl_safedistill.methods.entropy_mask import window_threshold

    a = args(entropy_mask_mode="fraction", entropy_mask_quantile=0.3)
    whole, whole_stats = low_entropy_keep_mask(ENTROPY, TARGET, SEGMENTS, a)
    threshold = window_threshold([ENTROPY[:1], ENTROPY[1:]], [TARGET[:1], TARGET[1:]], [SEGMENTS[:1], SEGMENTS[1:]], a)
    assert threshold == pytest.approx(whole_stats["entropy_threshold"]) == pytest.approx(0.027)
    parts = [low_entropy_keep_mask(ENTROPY[i : i + 1], TARGET[i : i + 1], SEGMENTS[i : i + 1], a, threshold=threshold)[0]
             for i in range(2)]
    assert torch.equal(torch.cat(parts), whole)
    # per micro-batch quantiles (the old rule) would mask differently: row 0 alone masks its 3 lowest of 6
    alone, _ = low_entropy_keep_mask(ENTROPY[:1], TARGET[:1], SEGMENTS[:1], a)
    assert not torch.equal(alone, whole[:1])
    # nothing to mask: -inf, and the mask keeps every target
    none = window_threshold([ENTROPY], [TARGET], [SEGMENTS], args(entropy_mask_mode="fraction", entropy_mask_quantile=0.0))
    assert none == float("-inf")
    keep, stats = low_entropy_keep_mask(ENTROPY, TARGET, SEGMENTS, a, threshold=none)
    assert torch.equal(keep, TARGET) and stats["entropy_threshold"] != stats["entropy_threshold"]  # nan
