"""``python -m trl_safedistill.experiments.compare_runs RUN_A RUN_B``: are two demo runs the same measurement?

Compares what a refactoring must not move, and ignores what it may (wall times, dates, the command line):

* every point estimate and ``n`` in ``report/metrics.json`` (models' metrics and safety summaries, curve
  points, the gate, the claims' verdicts); CIs are compared too but reported apart (``--ignore-ci`` drops them, for a change of interval method);
* every per-item judgment in the run's sample logs (``samples*.jsonl``: refusal / over-refusal / accuracy flags,
  matched by file and line), and, reported apart, whether the generated texts are identical.

A run is a demo run folder (``runs/demo-default``) or a results folder holding ``metrics.json`` only (then the
per-item comparison is skipped). Exit status 0 when nothing that must not move moved, 1 otherwise. Generated
texts are never printed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

VOLATILE = {"created", "wall_seconds", "stage_seconds", "parallel_groups", "command", "seconds", "finished", "device",
            "torch_threads", "output_dir", "train_runtime", "train_samples_per_second", "train_steps_per_second"}
TEXT_FIELDS = {"response", "prompt", "text", "completion"}


def _metrics(run: Path) -> dict[str, Any]:
    for candidate in (run / "report" / "metrics.json", run / "metrics.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text(encoding="utf-8"))
    raise FileNotFoundError(f"{run}: no report/metrics.json or metrics.json")


def _walk(a: Any, b: Any, path: str, diffs: list[str], ci_diffs: list[str], ignore_ci: bool) -> None:
    key = path.rsplit(".", 1)[-1]
    if key in VOLATILE:
        return
    target = ci_diffs if key == "ci" or ".ci" in path else diffs
    if key == "ci" and ignore_ci:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for name in sorted(set(a) | set(b)):
            if name not in a or name not in b:
                target.append(f"{path}.{name}: only in {'A' if name in a else 'B'}")
                continue
            _walk(a[name], b[name], f"{path}.{name}", diffs, ci_diffs, ignore_ci)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            target.append(f"{path}: {len(a)} vs {len(b)} entries")
            return
        for index, (x, y) in enumerate(zip(a, b)):
            label = x.get("name", index) if isinstance(x, dict) else index
            _walk(x, y, f"{path}[{label}]", diffs, ci_diffs, ignore_ci)
    elif isinstance(a, float) and isinstance(b, float):
        if not (a == b or (math.isnan(a) and math.isnan(b))):
            target.append(f"{path}: {a!r} vs {b!r}")
    elif a != b:
        target.append(f"{path}: {a!r} vs {b!r}")


def _sample_files(run: Path) -> dict[str, Path]:
    return {str(p.relative_to(run)): p for p in sorted(run.rglob("samples*.jsonl")) if "checkpoint-" not in str(p)}


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def compare(run_a: Path, run_b: Path, ignore_ci: bool = False) -> dict[str, list[str]]:
    """``{"metrics": [...], "ci": [...], "items": [...], "texts": [...]}``: the differences found, one line each."""
    diffs: list[str] = []
    ci_diffs: list[str] = []
    _walk(_metrics(run_a), _metrics(run_b), "metrics", diffs, ci_diffs, ignore_ci)
    items: list[str] = []
    texts: list[str] = []
    files_a, files_b = _sample_files(run_a), _sample_files(run_b)
    if files_a and files_b:  # a results folder has metrics.json only: then there is nothing per item to compare
        for name in sorted(set(files_a) | set(files_b)):
            if name not in files_a or name not in files_b:
                items.append(f"{name}: only in {'A' if name in files_a else 'B'}")
                continue
            rows_a, rows_b = _rows(files_a[name]), _rows(files_b[name])
            if len(rows_a) != len(rows_b):
                items.append(f"{name}: {len(rows_a)} vs {len(rows_b)} rows")
                continue
            for line, (x, y) in enumerate(zip(rows_a, rows_b), start=1):
                flags_a = {k: v for k, v in x.items() if k not in TEXT_FIELDS}
                flags_b = {k: v for k, v in y.items() if k not in TEXT_FIELDS}
                if flags_a != flags_b:
                    items.append(f"{name}:{line}: judgments differ")
                if any(x.get(k) != y.get(k) for k in TEXT_FIELDS):
                    texts.append(f"{name}:{line}")
    return {"metrics": diffs, "ci": ci_diffs, "items": items, "texts": texts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trl_safedistill.experiments.compare_runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--ignore-ci", action="store_true", help="do not compare intervals (a change of interval method)")
    args = parser.parse_args(argv)
    found = compare(Path(args.run_a), Path(args.run_b), args.ignore_ci)
    for kind, lines in found.items():
        print(f"{kind}: {len(lines)} difference(s)")
        for line in lines[:20]:
            print(f"  {line}")
        if len(lines) > 20:
            print(f"  ... and {len(lines) - 20} more")
    return 1 if found["metrics"] or found["items"] else 0


if __name__ == "__main__":
    sys.exit(main())
