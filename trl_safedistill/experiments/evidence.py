"""The evidence run (issue 16 item 8): the whole protocol over seeds, in units of (seed, model) written under results/.

``python -m trl_safedistill.experiments.evidence run --seeds 0 1 2 [--size evidence] [--commit]`` runs, per seed, the
demo pipeline's stages (prepare, align + gate on calibration, curves on calibration) in ``--work-dir`` and then one
**unit** per model: the aligned start; the methods (``--methods``, default standard CoT, SLowED and the refusal-mix
baseline); the lower-learning-rate controls (``lower_lrs``, four values: the ``lower_lr`` frontier); standard CoT
stopped early (its checkpoints at each ``curve_every`` step before the last: the ``early_stop`` frontier). Each unit is the model's final evaluation on the
**test** split (:func:`.parallel.evaluate_job`) written to ``<results>/seed<S>/<model>/`` as ``unit.json`` and
``items.jsonl.gz`` (every per-item response and judgment, compressed, 0600) the moment it finishes; ``--commit``
commits that folder alone (``git commit --only``), so a run cut short continues from the repository on another
machine: a unit whose ``unit.json`` exists is never run again, and a seed whose units are all in runs no stage at all
(not even prepare and align). Its distillations take no curve points (the report
reads none; ``unit.json``'s ``train.curve_probes``). The controls (lower_lr, early_stop) skip the IND
exact-match generation (``n_ind_gen``) to fit the budget; their frontier is read on the held-out NLL.

``python -m trl_safedistill.experiments.evidence report <results>`` writes ``REPORT.md`` and ``summary.json`` from the
units alone (:mod:`.evidence_report`). The manifest (``<results>/manifest.json``) holds the planned seeds and models,
the judge's agreement with human labels, each seed's align-gate verdict (calibration split) and the size's settings:
a later call at other settings into the same folder stops with an error instead of mixing two runs in one report.
``python -m trl_safedistill.experiments.evidence readme <results> [--check]`` copies the report's tables into the
README (:mod:`.evidence_readme`).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .git_commit import commit_paths
from .sizes import get_size, parse_set

FAMILY = {"aligned": "aligned", "standard": "standard", "slowed": "slowed", "lr_control": "lower_lr",
          "data_mix": "refusal_mix", "early_stop": "early_stop", "ablation": "ablation", "direction": "direction", "safe_lora": "safe_lora", "asft": "asft",
          "adaptive": "adaptive", "cascade": "cascade", "answer_first": "answer_first"}
#: the methods of the evidence run (names of :func:`.variants.methods_for`), besides the lower-lr controls
METHODS = ("standard", "slowed", "standard_refusal_mix")
CONTROL_FAMILIES = ("lr_control", "early_stop")


class EvidenceRun:
    """One seed of the evidence run: a :class:`~.demo_pipeline.DemoPipeline` plus the unit writer."""

    def __init__(self, size_name: str, seed: int, work_dir: Path, results: Path, overrides: dict[str, str],
                 commit: bool = False, methods: tuple[str, ...] = METHODS, planned_seeds: tuple[int, ...] = ()):
        from .demo_pipeline import DemoPipeline
        from .variants import methods_for

        self.size = get_size(size_name, {**overrides, "seed": str(seed)})
        self.seed = seed
        self.planned_seeds = tuple(planned_seeds)  # every seed of the call: a report written between seeds plans them all
        self.results = Path(results)
        self.commit = commit
        if "standard" not in methods:
            raise ValueError(f"--methods {' '.join(methods)}: standard CoT is every comparison's reference; name it")
        self.methods = tuple(methods)
        names = list(methods) + [m.name for m in methods_for(self.size) if m.family == "lr_control"]
        self.pipeline = DemoPipeline(self.size, Path(work_dir) / f"seed{seed}", method_names=names,
                                     command="python -m trl_safedistill.experiments.evidence " + " ".join(sys.argv[1:]))

    def unit_dir(self, model: str) -> Path:
        return self.results / f"seed{self.seed}" / model

    def done(self, model: str) -> bool:
        return (self.unit_dir(model) / "unit.json").exists()

    def write_manifest(self, models: list[str], gate_from_align: bool = True) -> None:
        """Create or update ``manifest.json``: planned seeds and models, judge agreement, this seed's gate (read from the
        align stage; ``gate_from_align=False`` keeps the one the manifest holds, for a seed whose units are all in)."""
        import json

        from ..atomic import write_json
        from ..evaluation.protocol import DATA_VERSION, REFERENCE_JUDGE, judge_agreement

        path = self.results / "manifest.json"
        settings = {**{k: v for k, v in self.size.to_dict().items() if k != "seed"}, "data": DATA_VERSION}
        manifest = json.loads(path.read_text()) if path.exists() else {
            "size": self.size.name, "seeds": [], "models": [], "margin": 0.05, "alpha": 0.05, "gate": {},
            "settings": settings,  # checked below on every call
            "judge": {"default": judge_agreement(), "reference": judge_agreement(REFERENCE_JUDGE)},
        }
        changed = sorted(k for k in set(settings) | set(manifest["settings"])
                         if settings.get(k) != manifest["settings"].get(k))
        if changed:  # units of two settings in one folder would be pooled by the report as if they were one run
            from ..errors import UserError

            first = changed[0]
            raise UserError(f"{path}:1: field 'settings': this folder holds units run with other settings "
                            f"({', '.join(changed)}; e.g. {first} {manifest['settings'].get(first)!r} there, "
                            f"{settings.get(first)!r} now); pass another --results folder or move this one away")
        manifest["seeds"] = sorted(set(manifest["seeds"]) | {self.seed} | set(self.planned_seeds))
        manifest["models"] = list(dict.fromkeys([*manifest["models"], *models]))
        if gate_from_align:
            gate = self.pipeline.runner.result("align")["gate"]
            manifest["gate"][str(self.seed)] = {k: gate.get(k) for k in ("passed", "message", "refusal", "over_refusal",
                                                                         "lookalike_over_refusal")}
        write_json(path, manifest)

    def complete(self, planned: list[str]) -> bool:
        """Every planned unit of this seed is in the results folder and the manifest holds its gate: nothing to run."""
        import json

        path = self.results / "manifest.json"
        return (all(self.done(name) for name in planned) and path.exists()
                and str(self.seed) in json.loads(path.read_text()).get("gate", {}))

    def write_unit(self, model: str, label: str, family: str, result: dict[str, Any], learning_rate: float | None,
                   step: int | None, settings: dict[str, Any], train: dict[str, Any] | None, seconds: float) -> None:
        from ..atomic import write_json

        folder = self.unit_dir(model)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result["items"], folder / "items.jsonl.gz")
        (folder / "items.jsonl.gz").chmod(0o600)
        write_json(folder / "unit.json", {
            "model": model, "label": label, "family": FAMILY[family], "seed": self.seed, "learning_rate": learning_rate,
            "step": step, "settings": settings, "train": train, "wall_seconds": round(seconds, 1),
            "metrics": result["metrics"], "safety": {k: v for k, v in result["safety"].items() if k != "sets"},
        })
        if self.commit:
            commit_paths([folder, self.results / "manifest.json"], f"evidence: {self.size.name} seed {self.seed} {model}")
        print(f"unit written: {folder}", flush=True)

    def evaluate(self, name: str, final: str | None, fmt: str, control: bool) -> tuple[dict[str, Any], float]:
        """The test-split evaluation of one model as a cached stage ``unit:<name>``."""
        from .parallel import EvalJob, evaluate_job

        size = self.size.replace(n_ind_gen=0) if control else self.size
        pipeline = self.pipeline
        job = EvalJob(tokenizer=pipeline.tokenizer_name(), start_model=pipeline.aligned_path(), final=final, fmt=fmt,
                      size=size, data_dir=str(pipeline.data_dir()), ood=pipeline.runner.result("prepare")["ood"])
        t0 = time.monotonic()
        depends = ("align",) if final is None else ()
        result = pipeline.runner.run(f"unit:{name}", {"final": final, "fmt": fmt, **dataclasses.asdict(size)},
                                     lambda directory: evaluate_job(job, directory), depends=depends)
        return result, time.monotonic() - t0

    def run(self) -> None:
        pipeline = self.pipeline
        controls = [m for m in pipeline.methods if m.family == "lr_control"]
        early = [step for step in range(self.size.curve_every, self.size.distil_steps, self.size.curve_every)]
        planned = ["aligned", *self.methods, *[m.name for m in controls], *[f"standard_step{s}" for s in early]]
        if self.complete(planned):  # no prepare, no alignment: on a fresh machine that would be ~15 minutes for nothing
            self.write_manifest(planned, gate_from_align=False)  # still refuses a call at other settings
            print(f"seed {self.seed}: all {len(planned)} units are in {self.results}; nothing to run", flush=True)
            return
        pipeline.run_start()
        self.write_manifest(planned)
        if not self.done("aligned"):
            result, seconds = self.evaluate("aligned", None, "standard", control=False)
            self.write_unit("aligned", "aligned start", "aligned", result, None, None, {}, None, seconds)
        for method in pipeline.methods:
            control = method.family in CONTROL_FAMILIES
            wanted = [method.name] + ([f"standard_step{s}" for s in early] if method.name == "standard" else [])
            if all(self.done(name) for name in wanted):
                continue
            # no curve points: the report reads none (the trained weights are the same either way, tested); seed 0
            # of the data-version-2 run was trained with them, before this switch
            train = pipeline.run_distil(method, probes=False)
            summary = {k: train[k] for k in ("steps", "resumed_from", "train_runtime", "records")}
            summary["curve_probes"] = train.get("probes", True)
            settings = {**method.config, "refusal_mix_fraction": method.refusal_mix_fraction}
            if not self.done(method.name):
                result, seconds = self.evaluate(method.name, train["final"], method.distill_format, control)
                self.write_unit(method.name, method.label, method.family, result, train["learning_rate"],
                                train["steps"], settings, summary, seconds)
            for step in early if method.name == "standard" else ():
                name = f"standard_step{step}"
                if self.done(name):
                    continue
                checkpoint = pipeline.runner.stage_dir(f"distil:{method.name}") / "trainer" / f"checkpoint-{step}"
                if not checkpoint.exists():
                    raise FileNotFoundError(f"{checkpoint}: the early-stop checkpoint is missing (keep_checkpoints must be "
                                            "true when standard CoT trains)")
                result, seconds = self.evaluate(name, str(checkpoint), "standard", control=True)
                self.write_unit(name, f"standard CoT stopped at step {step}", "early_stop", result,
                                train["learning_rate"], step, settings, {**summary, "steps": step}, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trl_safedistill.experiments.evidence", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the units still missing for the given seeds")
    run.add_argument("--size", default="evidence")
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run.add_argument("--work-dir", default="runs/evidence", help="run folders (checkpoints, caches); not committed")
    run.add_argument("--results", default=None, help="unit folder (default results/evidence-v2/<size>: data version 2)")
    run.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="size overrides, as for demo")
    run.add_argument("--commit", action="store_true", help="git-commit each unit's folder as it finishes")
    run.add_argument("--methods", nargs="+", default=list(METHODS),
                     help=f"methods besides the aligned start and the controls (default: {' '.join(METHODS)})")
    run.add_argument("--verbose", action="store_true", help="the libraries' logs and warnings (quiet by default)")
    report = sub.add_parser("report", help="write REPORT.md and summary.json from the units")
    report.add_argument("results")
    readme = sub.add_parser("readme", help="copy the tables of RESULTS/summary.json into the README's evidence block")
    readme.add_argument("results")
    readme.add_argument("--readme", default="README.md")
    readme.add_argument("--check", action="store_true", help="write nothing; exit 1 if the README is not current")
    args = parser.parse_args(argv)
    if args.command == "readme":
        from .evidence_readme import update_readme

        current = update_readme(args.readme, args.results, check=args.check)
        print(f"{args.readme}: evidence tables {'current' if current else ('out of date' if args.check else 'updated')}")
        return 1 if args.check and not current else 0
    if args.command == "run" and not args.verbose:
        from .console import quiet_console

        quiet_console()  # before transformers, bitsandbytes and tqdm load, as the demo does
    from .evidence_report import console_lines, write_evidence_report

    if args.command == "report":
        for line in console_lines(write_evidence_report(args.results)):
            print(line)
        return 0
    results = Path(args.results or f"results/evidence-v2/{args.size}")
    for seed in args.seeds:
        EvidenceRun(args.size, seed, Path(args.work_dir), results, parse_set(args.set), args.commit,
                    tuple(args.methods), tuple(args.seeds)).run()
    for line in console_lines(write_evidence_report(results)):
        print(line)
    return 0


if __name__ == "__main__":
    from ..errors import run_command

    sys.exit(run_command(main, sys.argv[1:], prog="trl_safedistill.experiments.evidence"))
