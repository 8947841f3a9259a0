"""``trl-safedistill demo``: the main job end to end: align, distil, evaluate, report.

::

    trl-safedistill demo                         # embedded default, <= 30 min on 2 CPU cores
    trl-safedistill demo --size longer           # more steps and evaluation items
    trl-safedistill demo --size gpu              # Qwen2.5-1.5B-Instruct, 4-bit QLoRA, one CUDA GPU
    trl-safedistill demo --size tiny             # tiny random model, a handful of steps (CI miniature)
    trl-safedistill demo --results-dir results/embedded-default   # also copy metrics.json, report.md, PNGs there

Stages (each cached in ``--output-dir``, default ``runs/demo-<size>``; ``--force`` reruns all, ``--force-stage NAME``
one; a killed run resumes the interrupted stage from its last checkpoint):

1. ``prepare``: bbh-cot train file, held-out (IND) files split into calibration and test parts, OOD (MMLU) and the
   protocol's safety files.
2. ``align``: LoRA safety alignment of the student, merged; the gate on the protocol's calibration parts (>= 85%
   refusal of harmful prompts, <= 20% over-refusal of benign prompts and of the look-alikes alone). A missed gate is
   reported at the top of the report and the run goes on; ``--set gate_enforced=true`` stops it (exit status 3).
3. ``curve0`` and ``distil:<method>``: every method from the aligned start, same data, steps and seed; curves on
   calibration data.
4. ``eval:<model>``: the final evaluation on the test split, aligned start included (Wilson / bootstrap 95% CIs,
   per-item rows in ``items.jsonl.gz``), two models at a time in worker processes on a CPU (``--set
   eval_workers=1``: one after the other in this process).
5. ``report``: ``metrics.json`` (schema: ``trl_safedistill/experiments/schema.json``), ``report.md``, PNGs and the
   run's units in the evidence layout with their claims (``report/evidence/``).

The console shows the progress lines (on stderr) and the report's path (on stdout), nothing else: the libraries'
log dicts, progress bars and warnings are off (:mod:`.console`) unless ``--verbose``. ``--set FIELD=VALUE`` overrides
one field of the size (:mod:`.sizes`: typed, range-checked; a bad value stops with one line and exit status 2).
Generated responses to harmful prompts are written to sample logs in the run folder, never to the console.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from .sizes import SIZES, get_size, parse_set


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-safedistill demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default", choices=sorted(SIZES), help="run size (default: %(default)s)")
    parser.add_argument("--output-dir", default=None, help="run folder (default: runs/demo-<size>)")
    parser.add_argument("--force", action="store_true", help="rerun every stage")
    parser.add_argument("--force-stage", action="append", default=[], metavar="NAME", help="rerun one stage (repeatable)")
    parser.add_argument("--methods", default=None, help="comma-separated subset of methods (default: all)")
    parser.add_argument("--full-ft", action="store_true", help="full fine-tuning instead of LoRA (lr: full_ft_lr)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a size field (repeatable; e.g. distil_steps=8, gate_enforced=false, lower_lrs=1e-4,5e-5)")
    parser.add_argument("--results-dir", default=None, help="copy metrics.json, report.md and the PNGs here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the libraries' output: Trainer log dicts, progress bars, warnings")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if not args.verbose:  # first: the libraries read some of its switches when they are imported
        from .console import quiet_console

        quiet_console()
    try:
        size = get_size(args.size, parse_set(args.set))
    except ValueError as error:
        print(f"trl-safedistill demo: {error}", file=sys.stderr)
        return 2
    if args.full_ft:
        size = size.replace(use_peft=False)
    from .demo_pipeline import DemoPipeline
    from .stages import StageError

    force: bool | set[str] = True if args.force else set(args.force_stage)
    run_dir = Path(args.output_dir or f"runs/demo-{size.name}")
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    try:
        command = "trl-safedistill demo " + shlex.join(sys.argv[1:] if argv is None else argv)
        pipeline = DemoPipeline(size, run_dir, force=force, method_names=methods, quiet=args.quiet, command=command)
        report_dir = pipeline.run()
    except StageError as error:
        print(f"trl-safedistill demo: stopped: {error}", file=sys.stderr)
        return error.exit_code
    except ValueError as error:
        print(f"trl-safedistill demo: {error}", file=sys.stderr)
        return 2
    print(f"report: {report_dir / 'report.md'}")
    if args.results_dir:
        target = Path(args.results_dir)
        target.mkdir(parents=True, exist_ok=True)
        for path in report_dir.iterdir():
            if path.suffix in (".json", ".md", ".png"):
                shutil.copy2(path, target / path.name)
        print(f"copied to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
