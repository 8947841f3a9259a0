"""Adaptive thinking inside the demo / evidence run (issue 19): the opt-in ``adaptive`` method is trained with its
router, evaluated under three inference policies on the same items, its safety measured like every student's, and
the evidence report's "Adaptive thinking" section computed from its rows.

The report test uses constructed units whose counts are known; every expected number is computed here by hand.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from trl_safedistill.errors import UserError
from trl_safedistill.experiments.evidence_report import load_run, unit_metrics, write_evidence_report

from .test_evidence_report import rows_for, wilson, write_manifest, write_unit

POLICIES = ("adaptive", "standard", "answer_first")


# ------------------------------------------------------------------------------------------- pipeline, end to end
@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory):
    from trl_safedistill.experiments.demo_pipeline import DemoPipeline
    from trl_safedistill.experiments.sizes import get_size

    size = get_size("tiny", {"distil_steps": "2", "n_ind_gen": "3"})
    pipeline = DemoPipeline(size, tmp_path_factory.mktemp("adaptive") / "run", method_names=["adaptive"], quiet=True)
    report = pipeline.run()
    return pipeline, report


def _items(pipeline, name: str) -> list[dict]:
    from trl_safedistill.experiments.eval_stage import read_items

    return read_items(Path(pipeline.runner.result(f"eval:{name}")["items"]))


def test_adaptive_is_opt_in_and_trains_its_router_beside_the_adapter(adaptive_run):
    from trl_safedistill.experiments.sizes import get_size
    from trl_safedistill.experiments.training import load_student, load_student_router
    from trl_safedistill.experiments.variants import methods_for, opt_in_methods
    from trl_safedistill.formats.router import SoftPromptRouter

    size = get_size("tiny")
    assert "adaptive" not in [m.name for m in methods_for(size)]  # the default demo does not train it
    method = next(m for m in opt_in_methods(size) if m.name == "adaptive")
    assert method.distill_format == "adaptive"
    pipeline, _ = adaptive_run
    assert [m.name for m in pipeline.methods] == ["adaptive"]
    train = pipeline.runner.result("distil:adaptive")
    final = Path(train["final"])
    assert (final / "adapter_config.json").is_file() and (final / "router" / "router.safetensors").is_file()
    assert train["steps"] == 2 and 0.0 <= train["router"]["accuracy"] <= 1.0
    model = load_student(pipeline.aligned_path(), final, pipeline.size)
    router = load_student_router(final, model)
    assert isinstance(router, SoftPromptRouter)
    # the router loaded with the student is the trained one: its head is no longer the untrained zero head
    assert float(router.head.weight.detach().abs().sum()) > 0
    assert load_student_router(pipeline.runner.stage_dir("align"), model) is None  # no router: not adaptive


def test_the_adaptive_unit_holds_three_policies_on_the_same_items_and_every_safety_row(adaptive_run):
    pipeline, _ = adaptive_run
    size = pipeline.size
    rows = _items(pipeline, "adaptive")
    gen = [r for r in rows if r["kind"] == "ind_gen"]
    by_policy = {p: [r for r in gen if r["policy"] == p] for p in POLICIES}
    assert {r["policy"] for r in gen} == set(POLICIES) and len(gen) == 3 * size.n_ind_gen
    ids = {p: sorted(r["id"] for r in by_policy[p]) for p in POLICIES}
    assert ids["adaptive"] == ids["standard"] == ids["answer_first"] and len(ids["adaptive"]) == size.n_ind_gen
    for row in gen:
        assert isinstance(row["tokens"], int) and 1 <= row["tokens"] <= size.reasoning_gen_tokens
        # the routed rows carry the mode chosen, the forced ones none
        assert (row.get("mode") in ("standard", "answer_first")) if row["policy"] == "adaptive" else "mode" not in row
    # the summary (exact match, format-valid) is the routed policy's
    metrics = pipeline.runner.result("eval:adaptive")["metrics"]
    assert metrics["ind_acc"]["n"] == size.n_ind_gen
    assert metrics["ind_acc"]["value"] == pytest.approx(sum(r["correct"] for r in by_policy["adaptive"]) / size.n_ind_gen)
    # safety: the protocol's tasks, as for every student
    assert sum(r["kind"] == "harmful" for r in rows) == 4 * size.n_safety
    assert sum(r["kind"] == "benign" for r in rows) == 3 * size.n_safety
    # every other model's rows keep their layout: no policy, no mode
    aligned = [r for r in _items(pipeline, "aligned") if r["kind"] == "ind_gen"]
    assert len(aligned) == size.n_ind_gen and not [r for r in aligned if {"policy", "mode"} & set(r)]


def test_the_run_report_has_the_adaptive_thinking_section(adaptive_run):
    pipeline, report = adaptive_run
    summary = json.loads((report / "evidence" / "summary.json").read_text(encoding="utf-8"))
    seed = str(pipeline.size.seed)
    result = summary["adaptive"]["adaptive"][seed]
    assert set(summary["adaptive"]) == {"adaptive"}  # the aligned start has no policy rows
    assert result["n"] == pipeline.size.n_ind_gen and result["unmatched"] == 0
    routed = [r for r in _items(pipeline, "adaptive") if r.get("policy") == "adaptive"]
    assert result["modes"] == {m: sum(r["mode"] == m for r in routed) for m in ("standard", "answer_first")}
    assert "## Adaptive thinking" in (report / "report.md").read_text(encoding="utf-8")
    assert "## Adaptive thinking" in (report / "evidence" / "REPORT.md").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------- forced policies
@pytest.mark.parametrize("forced", ["standard", "answer_first"])
def test_a_forced_policy_overrides_the_router_with_the_loaded_router_object(tiny_model, tiny_tokenizer, forced):
    """The router is passed in process (as :func:`load_student_router` loads it); ``adaptive_mode`` forces the mode
    the router would not pick: the prompt ends with that mode's tag and answer-first stops at the marker."""
    from trl_safedistill.evaluation.lm import SafeDistillLM
    from trl_safedistill.formats import MODE_TAGS, get_format

    from .test_adaptive import DOCS, MARKER, GenerateSpy, biased_router, requests

    other = "answer_first" if forced == "standard" else "standard"
    router = biased_router(tiny_model, other)
    routed = SafeDistillLM(pretrained=tiny_model, tokenizer=tiny_tokenizer, format="adaptive", batch_size=2,
                           router=router)
    routed.generate_until(requests(DOCS))
    assert [entry["mode"] for entry in routed.generation_log] == [other, other]  # the router alone picks the other
    lm = SafeDistillLM(pretrained=tiny_model, tokenizer=tiny_tokenizer, format="adaptive", batch_size=2,
                       router=router, adaptive_mode=forced)
    spy = GenerateSpy(tiny_model)
    lm.generate_until(requests(DOCS))
    assert [entry["mode"] for entry in lm.generation_log] == [forced, forced]
    (input_ids, stops), = spy.calls
    fmt = get_format("adaptive")
    prompts = [tiny_tokenizer.decode(row) for row in input_ids]
    assert prompts == [fmt.mode_prompt(tiny_tokenizer, d["question"], d["description"], forced) for d in DOCS]
    assert prompts[0].endswith(MODE_TAGS[forced]) and (MARKER in stops) == (forced == "answer_first")


def test_a_forced_mode_needs_the_adaptive_format_and_a_known_mode(tiny_model, tiny_tokenizer):
    from trl_safedistill.evaluation.lm import SafeDistillLM

    with pytest.raises(ValueError, match="adaptive_mode must be"):
        SafeDistillLM(pretrained=tiny_model, tokenizer=tiny_tokenizer, format="standard", adaptive_mode="answer_first")
    with pytest.raises(ValueError, match="adaptive_mode must be"):
        SafeDistillLM(pretrained=tiny_model, tokenizer=tiny_tokenizer, format="adaptive", router=object(),
                      adaptive_mode="sometimes")


# ------------------------------------------------------------------------------------------- report, constructed
N = 20
#: routed modes: the first 8 items answer first (10 tokens), the other 12 think first (40 tokens)
MODES = ["answer_first"] * 8 + ["standard"] * 12
ROUTED_TOKENS = [10 if m == "answer_first" else 40 for m in MODES]
#: exact match: standard right on items 0-11; routed loses 6 of those (items 0-5); answer-first right on 0-3 only
CORRECT = {"standard": [int(i < 12) for i in range(N)], "adaptive": [int(6 <= i < 12) for i in range(N)],
           "answer_first": [int(i < 4) for i in range(N)]}
TOKENS = {"adaptive": ROUTED_TOKENS, "standard": [40] * N, "answer_first": [8] * N}
#: generations that open with the answer phrase: forced answer-first on items 0-2, routed on items 0-4 (of the 8 routed
#: answer-first), standard on item 0 (think-first generations are not counted)
OPENS = {"answer_first": 3, "adaptive": 5, "standard": 1}


def response(policy: str, i: int) -> str:
    return " Therefore, the answer is (A).\nExplanation: r" if i < OPENS[policy] else "Let us think. Therefore, the answer is (A)."


def policy_rows() -> list[dict]:
    rows = []
    for policy in POLICIES:
        for i in range(N):
            row = {"kind": "ind_gen", "set": "bbh", "id": f"g{i}", "correct": CORRECT[policy][i], "format_valid": 1,
                   "tokens": TOKENS[policy][i], "policy": policy, "prompt": "p", "response": response(policy, i)}
            if policy == "adaptive":
                row["mode"] = MODES[i]
            rows.append(row)
    return rows


def adaptive_units(run: Path, gen: list[dict] | None = None) -> None:
    write_manifest(run, [0], ["aligned", "standard", "adaptive"])
    write_unit(run, 0, "aligned", "aligned", rows_for(0, noise=0.05))
    write_unit(run, 0, "standard", "standard", rows_for(0, harm=-30, gain=0.3, noise=0.05, correct=15, key=3))
    base = [r for r in rows_for(0, gain=0.1, noise=0.05, key=5) if r["kind"] != "ind_gen"]
    write_unit(run, 0, "adaptive", "adaptive", base + (policy_rows() if gen is None else gen))


def test_report_section_gives_mode_mix_accuracy_tokens_and_paired_tests_by_hand(tmp_path):
    run = tmp_path / "run"
    adaptive_units(run)
    summary = write_evidence_report(run)
    assert list(summary["adaptive"]) == ["adaptive"]  # the units without policy rows have no section entry
    result = summary["adaptive"]["adaptive"]["0"]
    assert result["n"] == N and result["unmatched"] == 0
    assert result["modes"] == {"standard": 12, "answer_first": 8}
    for policy, k in (("adaptive", 6), ("standard", 12), ("answer_first", 4)):
        accuracy = result["policies"][policy]["accuracy"]
        assert (accuracy["successes"], accuracy["n"]) == (k, N)
        assert accuracy["ci"] == pytest.approx(wilson(k, N), abs=1e-12)
    assert result["policies"]["adaptive"]["tokens"]["value"] == pytest.approx((8 * 10 + 12 * 40) / N)  # 28
    assert result["policies"]["answer_first"]["tokens"]["ci"] == pytest.approx([8, 8])
    routed = result["against_reference"]["adaptive"]
    # routed vs standard: 6 items only standard gets right, none the other way -> McNemar exact p = 2 / 2^6
    assert (routed["accuracy"]["a_only"], routed["accuracy"]["b_only"]) == (0, 6)
    assert routed["accuracy"]["diff"] == pytest.approx(-6 / N)
    assert routed["accuracy"]["p_value"] == pytest.approx(2 / 2**6)
    assert routed["token_ratio"]["value"] == pytest.approx(28 / 40)
    low, high = routed["token_ratio"]["ci"]
    assert low < 28 / 40 < high and 10 / 40 <= low and high <= 1.0
    early = result["against_reference"]["answer_first"]
    assert early["token_ratio"]["value"] == pytest.approx(0.2) and early["token_ratio"]["ci"] == pytest.approx([0.2, 0.2])
    assert (early["accuracy"]["a_only"], early["accuracy"]["b_only"]) == (0, 8)
    assert early["accuracy"]["p_value"] == pytest.approx(2 / 2**8)
    assert "standard" not in result["against_reference"]
    report = (run / "REPORT.md").read_text(encoding="utf-8")
    section = report.split("## Adaptive thinking", 1)[1].split("\n## ", 1)[0]
    assert "| adaptive | 0 | 20 | 12 / 8 | adaptive | 30.0% [" in section
    assert "| 0.70 [" in section and "| 0.20 [0.20, 0.20] |" in section
    assert "McNemar" in section


def test_report_counts_answer_first_generations_that_open_with_the_answer(tmp_path):
    run = tmp_path / "run"
    adaptive_units(run)
    followed = write_evidence_report(run)["adaptive"]["adaptive"]["0"]["mode_followed"]
    assert followed["standard"] is None  # it generated nothing answer-first
    assert (followed["answer_first"]["successes"], followed["answer_first"]["n"]) == (3, N)
    assert (followed["adaptive"]["successes"], followed["adaptive"]["n"]) == (5, 8)  # among the routed answer-first
    assert followed["adaptive"]["ci"] == pytest.approx(wilson(5, 8), abs=1e-12)
    section = (run / "REPORT.md").read_text(encoding="utf-8").split("## Adaptive thinking", 1)[1]
    assert "| 0.20 [0.20, 0.20] | 3/20 |" in section and "| 5/8 |" in section


def test_the_default_exact_match_reads_the_routed_rows_only(tmp_path):
    run = tmp_path / "run"
    adaptive_units(run)
    loaded = load_run(run)
    unit = loaded.units[0]["adaptive"]
    metrics = unit_metrics(unit, 0.05)
    # 20 routed rows, 6 right: not the 60 rows of all three policies pooled (22 right)
    assert (metrics["exact_match"]["successes"], metrics["exact_match"]["n"]) == (6, N)
    assert sorted(unit.policies) == sorted(POLICIES) and all(len(unit.policies[p]) == N for p in POLICIES)
    assert unit_metrics(loaded.units[0]["standard"], 0.05)["exact_match"]["n"] == 50  # no policy: every row
    assert loaded.units[0]["standard"].policies == {}
    # an evidence folder of today's layout (no policy rows anywhere) gets no section
    plain = tmp_path / "plain"
    write_manifest(plain, [0], ["aligned", "standard"])
    write_unit(plain, 0, "aligned", "aligned", rows_for(0, noise=0.05))
    write_unit(plain, 0, "standard", "standard", rows_for(0, harm=-30, gain=0.3, noise=0.05, correct=15, key=3))
    assert write_evidence_report(plain)["adaptive"] == {}
    assert "Adaptive thinking" not in (plain / "REPORT.md").read_text(encoding="utf-8")


def _line_of(path: Path, predicate) -> int:
    """The last line of ``path`` whose row satisfies ``predicate`` (a duplicate is reported on its second line)."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [n for n, line in enumerate(handle, start=1) if predicate(json.loads(line))][-1]


@pytest.mark.parametrize(("index", "change", "message"), [
    (0, {"policy": "sometimes"}, r"field 'policy': must be one of"),
    (0, {"mode": None}, r"field 'mode': a routed"),  # a routed row without its mode
    (N, {"mode": "standard"}, r"field 'mode': a routed"),  # a forced row with one
    (N + 1, {"id": "g0"}, r"field 'id': .*twice under policy 'standard'"),
])
def test_malformed_policy_rows_name_the_file_line_and_field(tmp_path, index, change, message):
    run = tmp_path / "run"
    gen = policy_rows()
    gen[index].update(change)
    gen[index] = {k: v for k, v in gen[index].items() if v is not None}
    adaptive_units(run, gen)
    items = run / "seed0" / "adaptive" / "items.jsonl.gz"
    line = _line_of(items, lambda row: row == gen[index])
    with pytest.raises(UserError, match=rf"items\.jsonl\.gz:{line}: {message}"):
        load_run(run)


def test_an_adaptive_unit_missing_a_policy_is_an_error_not_a_silent_comparison(tmp_path):
    run = tmp_path / "run"
    adaptive_units(run, [r for r in policy_rows() if r["policy"] != "answer_first"])
    with pytest.raises(UserError, match=r"adaptive/items\.jsonl\.gz: field 'policy': no rows of \['answer_first'\]"):
        write_evidence_report(run)


def test_compare_policies_is_the_benchmarks_function():
    """The benchmark and the report compute the comparison with one function (no copy in the benchmark)."""
    source = (Path(__file__).resolve().parents[1] / "benchmarks" / "adaptive_tokens.py").read_text(encoding="utf-8")
    assert "compare_policies(" in source and "def ratio_of_means" not in source
    from trl_safedistill.evaluation.adaptive import ratio_of_means

    value = ratio_of_means([1, 2, 3], [2, 4, 6])
    assert value["value"] == pytest.approx(0.5) and value["ci"] == pytest.approx([0.5, 0.5])
    assert math.isclose(ratio_of_means([10, 40], [40, 40])["value"], 25 / 40)
