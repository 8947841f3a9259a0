"""The align gate, the training curves and the sweep read only calibration data; only the final evaluation reads test data.

Issue 16 requires a test that feeds a poisoned test file and shows it is never read. This module builds a copy of the
project's cache (``$TRL_SAFEDISTILL_CACHE``, which :func:`trl_safedistill.models.cache_dir` and with it
:func:`trl_safedistill.data.offline.cache_root`, :func:`trl_safedistill.evaluation.prepare.eval_dir` and the lm-eval
loader :func:`trl_safedistill.evaluation.tasks.load` all honour) in which every file of a test part is replaced by
one whose every line is invalid JSON, so that any read of it raises:

* the protocol's ``safety/protocol/*_test.jsonl`` (AdvBench, HarmBench, Do-Not-Answer, look-alikes, imperatives,
  yes/no questions, and ``wrapped_test.jsonl``), and the legacy held-out safety files (``safety/advbench.jsonl``,
  ``harmbench.jsonl``, ``benign.jsonl``), which no stage of today's pipeline should read at all;
* after ``prepare``, the run folder's capability test part (``ind_gen_test.jsonl``, ``ind_mc_test.jsonl``,
  ``heldout_records_test.jsonl``).

Everything else (the model, the archives, the calibration and align parts, the IND/OOD suites) is a symlink to the
real cache, so the run is the real one. On that cache the tiny pipeline's start (``prepare``, ``align`` with its gate,
``curve0``), one distillation that probes its curve to the last step, the sweep's scoring of it
(:func:`trl_safedistill.experiments.sweep._score`) and the equal-effort sweep's probe of its saved student
(``_probe_final``) succeed; then the final evaluation (``eval:aligned``'s
:func:`~trl_safedistill.experiments.parallel.evaluate_job`) and the readers it uses fail on each poisoned file, which
shows the poison was live.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from trl_safedistill.evaluation import protocol
from trl_safedistill.experiments.sizes import get_size

MARKER = "POISONED-TEST-PART"
#: the run folder's capability test part, written by ``prepare`` (:func:`trl_safedistill.experiments.inputs.prepare_data`)
RUN_TEST_FILES = ("ind_gen_test.jsonl", "ind_mc_test.jsonl", "heldout_records_test.jsonl")
#: the pre-protocol held-out safety files: no stage reads them any more
LEGACY_HELDOUT = ("advbench.jsonl", "harmbench.jsonl", "benign.jsonl")


def poison(path: Path) -> None:
    """Replace ``path`` (a file or a symlink) by a file whose every line is invalid JSON and names it."""
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text("".join(f"{MARKER} {path.name} line {i}: never read before the final evaluation {{\n" for i in range(3)))


def mirror(source: Path, target: Path, descend: dict[str, dict | None]) -> None:
    """``target`` holds a symlink to every entry of ``source``, except the names in ``descend``, which are mirrored
    one level further (their own ``descend`` dict) or, for ``None``, left for the caller to write."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name in descend:
            if descend[entry.name] is not None:
                mirror(entry, target / entry.name, descend[entry.name])
        else:
            (target / entry.name).symlink_to(entry)


@pytest.fixture(scope="module")
def poisoned_cache(tmp_path_factory):
    """A cache whose test parts are poisoned; yields ``(cache root, [poisoned files])`` with the env var set."""
    from trl_safedistill.experiments.inputs import safety_files
    from trl_safedistill.models import cache_dir, embedded_default_path

    embedded_default_path()  # the model and the prepared files exist in the real cache before it is mirrored
    safety_files()
    real = cache_dir()
    cache = tmp_path_factory.mktemp("poisoned") / "cache"
    test_files = {protocol.task_file(name, "test") for name in (*protocol.HARMFUL_SETS["test"], *protocol.BENIGN_SETS)}
    protocol_dir = real / "eval" / "safety" / "protocol"
    names = {p.name for p in protocol_dir.iterdir()}
    assert {Path(f).name for f in test_files} == {n for n in names if n.endswith("_test.jsonl")}  # every test part
    descend = {name: None for name in names if name.endswith("_test.jsonl")}
    mirror(real, cache, {"eval": {"safety": {"protocol": descend, **dict.fromkeys(LEGACY_HELDOUT)}}})
    poisoned = [cache / "eval" / "safety" / "protocol" / name for name in descend]
    poisoned += [cache / "eval" / "safety" / name for name in LEGACY_HELDOUT]
    for path in poisoned:
        poison(path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRL_SAFEDISTILL_CACHE", str(cache))
        yield cache, poisoned


@pytest.fixture(scope="module")
def started(poisoned_cache, tmp_path_factory):
    """The tiny pipeline's start, one distillation probed to its last step and the sweep's score, on the poisoned cache.

    ``prepare`` is wrapped so that the run folder's test files are poisoned as soon as it has written them, before
    the gate, the curves or the sweep run.
    """
    from trl_safedistill.experiments import sweep
    from trl_safedistill.experiments.demo_pipeline import DemoPipeline

    run_dir = tmp_path_factory.mktemp("isolation") / "run"
    pipeline = DemoPipeline(get_size("tiny"), run_dir, method_names=["standard"], quiet=True)
    pipeline.progress.stages = ["prepare", "align", "curve0", "sweep:standard", "sweep-refusal:standard",
                                "sweep-probe:standard"]
    prepare = pipeline.stage_prepare

    def prepare_then_poison(directory: Path):
        result = prepare(directory)
        for name in RUN_TEST_FILES:
            assert (directory / name).stat().st_size > 0, name
            poison(directory / name)
        return result

    pipeline.stage_prepare = prepare_then_poison
    pipeline.run_start()
    train = pipeline.run_distil(pipeline.methods[0], stage="sweep:standard", probe_last=True)
    score = sweep._score(pipeline, "standard")
    score["probe"] = sweep._probe_final(pipeline, "standard")  # the equal-effort sweep's probe of a saved student
    return pipeline, train, score


def logged_tasks(path: Path) -> set[str]:
    return {json.loads(line)["task"] for line in path.read_text().splitlines() if line.strip()}


def test_the_gate_the_curves_and_the_sweep_run_without_reading_a_test_file(poisoned_cache, started):
    cache, poisoned = poisoned_cache
    pipeline, train, score = started
    r = pipeline.runner
    # the pipeline looked for its safety files in the poisoned cache (else the poison proves nothing)
    files = r.result("prepare")["safety_files"]
    assert {Path(p) for p in files["test"].values()} == {p for p in poisoned if p.name.endswith("_test.jsonl")}
    assert all(Path(p).is_relative_to(cache) for part in files.values() for p in part.values())
    # the gate measured the calibration tasks, all of them and nothing else
    gate = r.result("align")["gate"]
    assert gate["part"] == "calibration" and gate["n_harmful"] > 0 and gate["n_benign"] > 0
    calibration = set(protocol.tasks("calibration"))
    assert logged_tasks(r.stage_dir("align") / "samples_gate.jsonl") == calibration
    # the curve has its step-0 point and every probed step, the last one included, on calibration data
    size = pipeline.size
    assert [p["step"] for p in train["curve"]] == [0, 2, 4]
    assert all(p["n_harmful"] == size.curve_n_harmful and p["n_ind"] == size.curve_n_ind and p["n_loss"] == size.curve_n_loss
               for p in train["curve"])
    # the sweep's score is the gate's measurement on the trained student
    assert score["n"] == gate["n_harmful"] and 0.0 <= score["refusal"] <= 1.0
    assert logged_tasks(r.stage_dir("sweep-refusal:standard") / "samples.jsonl") == calibration
    assert score["probe"]["n_loss"] == size.curve_n_loss and score["probe"]["n_harmful"] == size.curve_n_harmful
    for path in poisoned + [r.stage_dir("prepare") / name for name in RUN_TEST_FILES]:
        assert path.read_text().startswith(MARKER), path  # still the poison: nothing rebuilt the file


def test_the_final_evaluation_reads_the_poisoned_files(poisoned_cache, started, tmp_path):
    from trl_safedistill.experiments.parallel import evaluate_job

    _, poisoned = poisoned_cache
    pipeline, _, _ = started
    with pytest.raises(ValueError) as error:
        evaluate_job(pipeline.eval_job("aligned"), tmp_path / "eval")
    assert re.search(r"(?:advbench|harmbench|donotanswer|wrapped|lookalike|imperative|falseclaims)_test\.jsonl:1: not valid JSON",
                     str(error.value)), str(error.value)
    assert any(str(path) in str(error.value) for path in poisoned)


@pytest.mark.parametrize("set_name", [*protocol.HARMFUL_SETS["test"], *protocol.BENIGN_SETS])
def test_every_poisoned_protocol_file_is_live_for_its_test_task(poisoned_cache, set_name):
    """The loader of each test task (the ``custom_dataset`` hook its YAML names) reads the poisoned file and fails."""
    from trl_safedistill.evaluation.tasks import load

    cache, _ = poisoned_cache
    relative = protocol.task_file(set_name, "test")
    with pytest.raises(ValueError, match=re.escape(f"{cache / 'eval' / relative}:1: not valid JSON")):
        load(file=relative)


@pytest.mark.parametrize("name", RUN_TEST_FILES)
def test_every_poisoned_run_file_is_live_for_the_final_evaluation(started, name):
    """The final evaluation's capability readers (:func:`~trl_safedistill.experiments.eval_stage.reasoning_items`) reach
    each of the run folder's test files, in order: exact match, then multiple choice, then the NLL rationales."""
    from trl_safedistill.experiments.eval_stage import reasoning_items

    pipeline, _, _ = started
    off = {"ind_gen_test.jsonl": {}, "ind_mc_test.jsonl": {"n_ind_gen": 0},
           "heldout_records_test.jsonl": {"n_ind_gen": 0, "n_ind_mc": 0}}[name]
    size = pipeline.size.replace(**off)
    model = pipeline.load(pipeline.aligned_path())
    directory = pipeline.data_dir()
    with pytest.raises(ValueError) as error:  # json.JSONDecodeError is a ValueError
        reasoning_items(model, pipeline.tokenizer, "standard", size, directory, {"available": False}, directory.parent / "x")
    text = str(error.value) + getattr(error.value, "doc", "")
    assert f"{MARKER} {name}" in text or f"{directory / name}:1: not valid JSON" in text, text


def test_the_cache_variable_is_what_every_reader_resolves(poisoned_cache):
    """The premise of this module: the env var moves the cache for the model, the archives and the prepared files."""
    from trl_safedistill.data.offline import cache_root
    from trl_safedistill.evaluation.prepare import eval_dir
    from trl_safedistill.models import cache_dir

    cache, _ = poisoned_cache
    assert os.environ["TRL_SAFEDISTILL_CACHE"] == str(cache)
    assert cache_dir() == cache and cache_root() == cache and eval_dir() == cache / "eval"
