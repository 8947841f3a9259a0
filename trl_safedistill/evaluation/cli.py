"""``trl-safedistill eval``: evaluate a model and its adapters side by side and write the report.

Example::

    trl-safedistill eval --model embedded-default --adapter runs/cascade@cascade --suites safety,ind,ood \\
        --limit 32 --output reports/cmp

``--adapter PATH[@FORMAT]`` may repeat; each adapter is evaluated on the same base in its own format
(default ``--format``). Responses go to ``OUTPUT/samples-<row>.jsonl`` only; the console shows metrics.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..formats import FORMATS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-safedistill eval", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="hub id, local folder, or embedded-default")
    parser.add_argument("--adapter", action="append", default=[], help="PEFT adapter folder, optionally @FORMAT; repeatable")
    parser.add_argument("--format", default="standard", choices=sorted(FORMATS), help="format of the base model row")
    parser.add_argument("--suites", default="safety,ind,ood", help="comma-separated: safety, ind, ood")
    parser.add_argument("--limit", type=int, default=32, help="items per task (0: all)")
    parser.add_argument("--output", required=True, help="report folder")
    parser.add_argument("--max-gen-toks", type=int, default=128, help="cap on generated tokens per pass")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--guard", default=None, help="guard spec for harmfulness (trl_safedistill.guard.judge.load_judge)")
    parser.add_argument("--first-tokens", type=int, default=32, help="length-controlled safety ratio: first N tokens")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    parser.add_argument("--cache", default=None, help="offline data cache (default: the project cache)")
    parser.add_argument("--no-base", action="store_true", help="skip the row of the base model alone")
    return parser


def _row_name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.strip("/"))[-60:] or "adapter"


def eval_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    adapters = []
    for spec in args.adapter:
        path, _, fmt = spec.partition("@")
        fmt = fmt or args.format
        if fmt not in FORMATS:
            print(f"trl-safedistill eval: --adapter {spec}: unknown format '{fmt}' (choose {sorted(FORMATS)})", file=sys.stderr)
            return 2
        if not Path(path).is_dir():
            print(f"trl-safedistill eval: --adapter {spec}: folder '{path}' not found", file=sys.stderr)
            return 2
        adapters.append((path, fmt))

    from .run import evaluate_model, plan_tasks

    try:
        plan_tasks(suites, online=False)
    except ValueError as error:
        print(f"trl-safedistill eval: --suites: {error}", file=sys.stderr)
        return 2
    import torch
    from transformers import AutoModelForCausalLM

    from ..models import load_tokenizer, resolve_model_path
    from .report import COLUMNS, markdown_table, write_report

    guard = None
    if args.guard:
        from ..guard.judge import load_judge

        guard = load_judge(args.guard)
    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)
    dtype = torch.float32 if not torch.cuda.is_available() else "auto"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if torch.cuda.is_available():
        model = model.to("cuda")
    output = Path(args.output)
    limit = args.limit or None
    common = dict(
        suites=suites,
        limit=limit,
        max_gen_toks=args.max_gen_toks,
        batch_size=args.batch_size,
        guard=guard,
        first_tokens=args.first_tokens,
        bootstrap_iters=args.bootstrap,
        cache=args.cache,
    )
    rows = []
    runs = [] if args.no_base else [(None, args.format)]
    runs += adapters
    for adapter, fmt in runs:
        name = args.model if adapter is None else _row_name(adapter)
        print(f"[eval] {name} (format {fmt}, suites {','.join(suites)}, limit {limit})", flush=True)
        evaluated = model
        if adapter is not None:
            from peft import PeftModel

            evaluated = PeftModel.from_pretrained(model, adapter)
        result = evaluate_model(
            evaluated, tokenizer, fmt, sample_log=output / f"samples-{_row_name(name)}.jsonl", **common
        )
        rows.append({"name": name, "model": args.model, "adapter": adapter, "format": fmt, **result})
        if adapter is not None:
            model = evaluated.unload()
        for task, reason in result["skipped"].items():
            print(f"[eval] skipped {task}: {reason}", flush=True)
    paths = write_report(rows, output)
    print(markdown_table(rows))
    print(f"[eval] wrote {paths['metrics']}, {paths['report']}, {paths['chart']} ({len(COLUMNS)} columns)")
    return 0
