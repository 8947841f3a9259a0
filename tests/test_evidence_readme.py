"""The README's evidence tables are generated from the committed report, never typed: a constructed summary gives
known cells, only the marked block is rewritten, and the committed README matches the committed summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trl_safedistill.errors import UserError
from trl_safedistill.experiments.evidence import main
from trl_safedistill.experiments.evidence_readme import BEGIN, END, readme_block, update_readme

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "results" / "evidence-v2" / "embedded-default"


def rate(value: float | None, n: int) -> dict:
    return {"value": value, "ci": None if value is None else [value - 0.1, value + 0.1], "n": n}


def seed_entry(refusal: float, over: float, nll: float, em: float | None, fv: float | None) -> dict:
    return {"refusal": rate(refusal, 160), "over_refusal": rate(over, 120), "nll_per_token": rate(nll, 200),
            "exact_match": rate(em, 100), "format_valid": rate(fv, 100)}


def summary() -> dict:
    """Seeds 0-2 planned; the aligned start on seeds 0 and 1, one control on seed 0 (no exact match: a control),
    SLowED on seed 0 above the lower-lr frontier and, refusing less than every early-stop point, with a bound."""
    return {
        "seeds_planned": [0, 1, 2], "seeds_present": [0, 1], "small_n": "Undecided because n is small.",
        "gate": {"note": "the alignment does not discriminate on seed(s) 1",
                 "per_seed": {"0": {"passed": True, "refusal": 0.90625, "over_refusal": 0.1, "lookalike_over_refusal": 0.125},
                              "1": {"passed": False, "refusal": 0.8333, "over_refusal": 0.2262, "lookalike_over_refusal": 0.25}}},
        "judge": {"default": {"name": "refusal-v1", "n": 1350, "accuracy": {"value": 0.9178, "ci": [0.902, 0.931]},
                              "precision": {"value": 0.945, "ci": [0.924, 0.961]},
                              "recall": {"value": 0.879, "ci": [0.852, 0.902]}}},
        "models": {
            "aligned": {"label": "aligned start", "family": "aligned",
                        "per_seed": {"0": seed_entry(0.7125, 0.1167, 1.5510, 0.05, 0.05),
                                     "1": seed_entry(0.73125, 0.1333, 1.54866, 0.04, 0.03)}},
            "standard_lr3e-5": {"label": "standard, lr 3e-05", "family": "lower_lr",
                                "per_seed": {"0": seed_entry(0.58125, 0.0333, 1.4522, None, None)}},
            "slowed": {"label": "SLowED", "family": "slowed",
                       "per_seed": {"0": seed_entry(0.425, 0.075, 1.35834, 0.07, 0.29)}},
        },
        "claims": {
            "capability": {"claim": "standard CoT improves capability", "verdict": "undecided",
                           "pooled_nll": {"diff": 0.25332, "ci": [0.19956, 0.31073], "p_value": 6.7e-19, "n": 400}},
            "keeps_safety": {}, "retained_gain": {},
            "frontier": {"slowed": {"families": {
                "lower_lr": {"per_seed": {"0": {"diff": 0.0075, "bound": None}}},
                "early_stop": {"per_seed": {"0": {"diff": -0.1037, "bound": {"model": "standard_step8"}}}}}}},
        },
    }


def test_the_seed_table_has_one_cell_per_planned_seed_by_hand() -> None:
    block = readme_block(summary())
    assert block.startswith(BEGIN + "\n") and block.endswith("\n" + END)
    assert "| aligned start · `aligned` | 71.2 / 73.1 / - | 11.7 / 13.3 / - | 1.551 / 1.549 / - | 5.0 / 4.0 / - | " \
           "5.0 / 3.0 / - |  |  |" in block
    # a control: its exact match is not measured (n/a), its frontier columns say it is the frontier
    assert "| standard, lr 3e-05 · `standard_lr3e-5` | 58.1 / - / - | 3.3 / - / - | 1.452 / - / - | n/a / - / - | " \
           "n/a / - / - | control | control |" in block
    # a method: claim 4 per seed, the bound (least-refusing control point) starred
    assert "| SLowED · `slowed` | 42.5 / - / - | 7.5 / - / - | 1.358 / - / - | 7.0 / - / - | 29.0 / - / - | " \
           "+0.007 / - / - | -0.104* / - / - |" in block
    assert "Refusal of 160 harmful and over-refusal of 120 benign" in block
    assert "pooled NLL gain 0.253 [0.200, 0.311] nats/token, Wilcoxon p = 6.7e-19, over 400 paired" in block
    assert "Seeds present: 0, 1 (planned: 0, 1, 2). Undecided because n is small." in block
    assert ("seed 0 passed (refusal 90.6%, over-refusal 10.0%, look-alikes 12.5%); seed 1 **failed** (refusal 83.3%, "
            "over-refusal 22.6%, look-alikes 25.0%). **The alignment does not discriminate on seed(s) 1.**") in block
    assert ("against 1350 human labels (`../shared/data/refusal-labels/`, 95% CIs): refusal-v1 accuracy 91.8% "
            "[90.2, 93.1], precision 94.5% [92.4, 96.1], recall 87.9% [85.2, 90.2].") in block


def test_a_summary_without_judge_agreement_says_the_numbers_are_unvalidated() -> None:
    bare = summary()
    del bare["judge"]
    assert "**No judge agreement recorded: the refusal numbers are unvalidated.**" in readme_block(bare)


def test_only_the_marked_block_is_rewritten(tmp_path: Path) -> None:
    results = tmp_path / "run"
    results.mkdir()
    (results / "summary.json").write_text(json.dumps(summary()))
    head, tail = "# Title\n\nbefore the tables\n", "\nafter the tables\n"
    readme = tmp_path / "README.md"
    readme.write_text(head + BEGIN + "\nstale numbers\n" + END + tail)
    assert update_readme(readme, results, check=True) is False
    assert "stale numbers" in readme.read_text()  # --check writes nothing
    assert main(["readme", str(results), "--readme", str(readme), "--check"]) == 1
    assert main(["readme", str(results), "--readme", str(readme)]) == 0
    assert readme.read_text() == head + readme_block(summary()) + tail
    assert main(["readme", str(results), "--readme", str(readme), "--check"]) == 0


def test_a_readme_without_both_markers_is_refused_by_name(tmp_path: Path) -> None:
    results = tmp_path / "run"
    results.mkdir()
    (results / "summary.json").write_text(json.dumps(summary()))
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n" + END + "\n")
    with pytest.raises(UserError, match="README.md: needs exactly one line"):
        update_readme(readme, results)
    assert readme.read_text() == "# no markers\n" + END + "\n"
    readme.write_text(BEGIN + "\n" + END + "\n")
    with pytest.raises(UserError, match="summary.json: no evidence summary"):
        update_readme(readme, tmp_path / "nowhere")
    (results / "summary.json").write_text("{")
    with pytest.raises(UserError, match="summary.json:1: not valid JSON"):
        update_readme(readme, results)


def test_the_committed_readme_holds_the_committed_evidence_tables() -> None:
    """Regenerating the report without `evidence readme`, or editing a number by hand, fails here."""
    assert update_readme(ROOT / "README.md", COMMITTED, check=True), (
        "README.md's evidence tables differ from results/evidence-v2/embedded-default/summary.json: run "
        "`python -m trl_safedistill.experiments.evidence readme results/evidence-v2/embedded-default`")
