"""``trl-safedistill eval``: evaluate a model and its adapters side by side and write the report.

Example::

    trl-safedistill eval --model embedded-default --adapter runs/cascade@cascade --suites safety,ind,ood \\
        --limit 32 --output reports/cmp

``--adapter PATH[@FORMAT]`` may repeat; each adapter is evaluated on the same base in its own format
(default ``--format``). Responses go to ``OUTPUT/samples-<row>.jsonl`` only; the console shows metrics.

Rationale compression (TokenSkip): ``--adapter PATH@compressed:G`` prompts the adapter with
``Compression ratio: G`` (default ``--compression-ratio``, 1); its row is named ``<path>@g<G>``, so one
adapter may be evaluated at several ratios. ``--compression-stats [ROW=]STATS`` attaches the
``OUT.report.json`` of ``trl-safedistill compress`` (tokens per rationale before/after) to the
compressed rows named ``ROW`` (a row name or an adapter folder as given; without ``ROW=``: every
compressed row). The report then compares each compressed row with ``--compression-baseline ROW``
(default: the first row in another format); see :func:`.report.compression_section`. For example::

    trl-safedistill eval --model embedded-default --adapter runs/std@standard \\
        --adapter runs/tokenskip@compressed:0.6 --adapter runs/tokenskip@compressed:1 \\
        --compression-stats data/compressed.jsonl.report.json --suites ind,ood --output reports/tokenskip
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from ..formats import FORMATS, read_format_settings
from ..formats.compressed import ratio_key


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
    parser.add_argument("--compression-ratio", type=float, default=1.0,
                        help="ratio g stated in the prompt of compressed rows without @compressed:G (default 1)")
    parser.add_argument("--compression-stats", action="append", default=[], metavar="[ROW=]STATS",
                        help="OUT.report.json of `compress` for the compressed rows ROW (default: all); repeatable")
    parser.add_argument("--compression-baseline", default=None, metavar="ROW",
                        help="row the compressed rows are compared with (default: the first row in another format)")
    return parser


def _row_name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.strip("/"))[-60:] or "adapter"


def _parse_ratio(text: str, spec: str) -> float:
    try:
        g = float(text)
    except ValueError:
        raise ValueError(f"{spec}: compression ratio '{text}' is not a number") from None
    if not 0 < g <= 1:
        raise ValueError(f"{spec}: compression ratio must lie in (0, 1], got {text}")
    return g


#: the weight files PEFT's ``save_pretrained`` writes (safetensors, or the legacy pickle)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_adapter(path: str, flag: str) -> None:
    """Raise ``ValueError`` (one line naming the folder and what is missing) unless ``path`` is a PEFT adapter folder:
    a readable ``adapter_config.json`` that names its ``peft_type``, and one of :data:`ADAPTER_WEIGHTS`.

    Checked before anything is loaded, so a wrong folder costs no minutes of base-model evaluation.
    """
    folder = Path(path)
    problems = []
    config = folder / "adapter_config.json"
    if not config.is_file():
        problems.append("no adapter_config.json")
    else:
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            problems.append(f"adapter_config.json is not readable ({type(error).__name__}: {error})")
        else:
            if not isinstance(data, dict) or "peft_type" not in data:
                problems.append("adapter_config.json names no peft_type")
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHTS):
        problems.append("no " + " or ".join(ADAPTER_WEIGHTS))
    if problems:
        hint = " (it holds a full model: pass that as --model)" if (folder / "config.json").is_file() else ""
        raise ValueError(f"{flag}: '{folder}' is not a PEFT adapter folder: {'; '.join(problems)}{hint}")


def plan_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows to evaluate, ``{"name", "adapter", "format", "compression_ratio", "answer_phrase",
    "answer_first_marker"}`` each, from the flags.

    An adapter without ``@FORMAT`` is evaluated in the format saved beside it by training
    (:data:`~trl_safedistill.formats.FORMAT_FILE`), with its answer phrase and answer-first marker; ``--format``
    is the fallback for adapters that have none.

    Raises ``ValueError`` with the flag at fault: first the flags' syntax, then each adapter folder
    (:func:`check_adapter`). A compressed row's name ends with ``@g{G}``.
    """
    specs: list[tuple[str | None, str, str]] = [] if args.no_base else [(None, args.format, f"--format {args.format}")]
    specs += [(*spec.partition("@")[::2], f"--adapter {spec}") for spec in args.adapter]
    default_g = _parse_ratio(str(args.compression_ratio), "--compression-ratio")
    rows = []
    for path, fmt_spec, flag in specs:
        saved = read_format_settings(path) if path is not None and Path(path).is_dir() else None
        fmt, _, g_text = (fmt_spec or (saved or {}).get("format") or args.format).partition(":")
        if fmt not in FORMATS:
            raise ValueError(f"{flag}: unknown format '{fmt}' (choose {sorted(FORMATS)})")
        if g_text and fmt != "compressed":
            raise ValueError(f"{flag}: a ratio (:{g_text}) applies to the compressed format only")
        if path is not None and not Path(path).is_dir():
            raise ValueError(f"{flag}: folder '{path}' not found")
        g = (_parse_ratio(g_text, flag) if g_text else default_g) if fmt == "compressed" else None
        name = args.model if path is None else _row_name(path)
        if g is not None:
            name += f"@g{ratio_key(g)}"
        trained = saved if saved and saved.get("format") == fmt else {}  # prompt it as it was trained
        rows.append({"name": name, "adapter": path, "format": fmt, "compression_ratio": g,
                     "answer_phrase": trained.get("answer_phrase"), "answer_first_marker": trained.get("marker")})
    names = [r["name"] for r in rows]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"--adapter: rows {duplicates} would share a name (and a sample log); give each once")
    for (path, _, flag) in specs:
        if path is not None:
            check_adapter(path, flag)
    return rows


def _matches(row: dict[str, Any], key: str) -> bool:
    return key in (row["name"], row["adapter"])


def attach_compression(rows: list[dict[str, Any]], args: argparse.Namespace) -> str | None:
    """Load ``--compression-stats`` into the compressed rows and resolve ``--compression-baseline``.

    Returns the baseline row's name (``None``: the report's default). Raises ``ValueError``.
    """
    from .report import load_compression_stats

    compressed = [r for r in rows if r["format"] == "compressed"]
    for spec in args.compression_stats:
        key, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
        targets = [r for r in compressed if not key or _matches(r, key)]
        if not targets:
            which = f"no compressed row '{key}'" if key else "no row is in the compressed format"
            raise ValueError(f"--compression-stats {spec}: {which} (compressed rows: {[r['name'] for r in compressed]})")
        stats = load_compression_stats(path)
        for row in targets:
            row["compression_stats"] = stats
    if args.compression_baseline is None:
        return None
    found = [r for r in rows if _matches(r, args.compression_baseline)]
    if len(found) != 1:
        what = "matches several rows" if found else "is not a row"
        raise ValueError(f"--compression-baseline {args.compression_baseline}: {what} (rows: {[r['name'] for r in rows]})")
    return found[0]["name"]


def eval_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    try:
        planned = plan_rows(args)
        baseline = attach_compression(planned, args)
    except ValueError as error:
        print(f"trl-safedistill eval: {error}", file=sys.stderr)
        return 2

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
    for plan in planned:
        name, adapter, fmt = plan["name"], plan["adapter"], plan["format"]
        ratio = f" g={ratio_key(plan['compression_ratio'])}" if plan["compression_ratio"] is not None else ""
        print(f"[eval] {name} (format {fmt}{ratio}, suites {','.join(suites)}, limit {limit})", flush=True)
        evaluated = model
        if adapter is not None:
            from peft import PeftModel

            evaluated = PeftModel.from_pretrained(model, adapter)
        result = evaluate_model(
            evaluated, tokenizer, fmt, sample_log=output / f"samples-{_row_name(name)}.jsonl",
            compression_ratio=plan["compression_ratio"], answer_first_marker=plan.get("answer_first_marker"),
            **({"answer_phrase": plan["answer_phrase"]} if plan.get("answer_phrase") else {}), **common
        )
        rows.append({**plan, "model": args.model, **result})
        if adapter is not None:
            model = evaluated.unload()
        for task, reason in result["skipped"].items():
            print(f"[eval] skipped {task}: {reason}", flush=True)
    paths = write_report(rows, output, compression_baseline=baseline, bootstrap_iters=args.bootstrap)
    print(markdown_table(rows))
    print(f"[eval] wrote {paths['metrics']}, {paths['report']}, {paths['chart']} ({len(COLUMNS)} columns)")
    return 0
