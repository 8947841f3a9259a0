"""The evaluation report: ``metrics.json``, ``report.md`` (one row per model/adapter) and ``metrics.png``.

``metrics.json`` schema: ``{"rows": [{"name", "model", "adapter", "format", "summary": {metric: {"value",
"ci", "n"} | null}, "tasks": {...}, "skipped": {task: reason}}], "columns": [...]}``; see
:mod:`.run` for the metrics. Cells read ``value [low, high]`` (bootstrap 95% CI), ``n/a`` when the
metric was not measured (e.g. harmfulness without ``--guard``).
"""

from __future__ import annotations

import json
from pathlib import Path

#: (summary key, column title, percentage?) in table order.
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("safety_ratio", "safety ratio (AdvBench held-out)", True),
    ("safety_ratio_first32", "safety ratio, first 32 tokens", True),
    ("harmbench_safety_ratio", "HarmBench refusal", True),
    ("harmfulness", "harmfulness (guard)", True),
    ("over_refusal", "over-refusal", True),
    ("ind_acc", "IND acc (CoT)", True),
    ("ood_acc", "OOD acc (CoT)", True),
    ("ind_mc_acc", "IND acc (MC log-lik.)", True),
    ("ood_mc_acc", "OOD acc (MC log-lik.)", True),
    ("ood_hub_acc", "OOD ARC/AGIEval", True),
    ("tokens_per_question", "tokens/question", False),
)


def _cell(entry: dict | None, percent: bool) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    scale = 100.0 if percent else 1.0
    text = f"{entry['value'] * scale:.1f}"
    if entry.get("ci"):
        low, high = entry["ci"]
        text += f" [{low * scale:.1f}, {high * scale:.1f}]"
    return text


def markdown_table(rows: list[dict]) -> str:
    present = [c for c in COLUMNS if any(r["summary"].get(c[0]) is not None or c[0] == "harmfulness" for r in rows)]
    header = "| model | " + " | ".join(title + (" %" if pct else "") for _, title, pct in present) + " |"
    lines = [header, "|" + "---|" * (len(present) + 1)]
    for row in rows:
        cells = [_cell(row["summary"].get(key), pct) for key, _, pct in present]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(rows: list[dict], path: Path) -> Path:
    """Grouped bars (one group per metric in %, one bar per row) with 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = [(k, t) for k, t, pct in COLUMNS if pct and any((r["summary"].get(k) or {}).get("value") is not None for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(metrics) * max(1, len(rows)) / 2 + 3), 4.5))
    width = 0.8 / max(1, len(rows))
    positions = np.arange(len(metrics))
    for index, row in enumerate(rows):
        values, errors = [], [[], []]
        for key, _ in metrics:
            entry = row["summary"].get(key) or {}
            value = (entry.get("value") or 0.0) * 100
            low, high = [c * 100 for c in entry["ci"]] if entry.get("ci") else (value, value)
            values.append(value)
            errors[0].append(max(0.0, value - low))
            errors[1].append(max(0.0, high - value))
        ax.bar(positions + index * width - 0.4 + width / 2, values, width, yerr=errors, capsize=3, label=row["name"])
    ax.set_xticks(positions)
    ax.set_xticklabels([t for _, t in metrics], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("% (95% bootstrap CI)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(rows: list[dict], output: Path | str, title: str = "trl-safedistill evaluation") -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md`` and ``metrics.png`` into ``output``; returns their paths."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    metrics_path = output / "metrics.json"
    metrics_path.write_text(json.dumps({"columns": [c[0] for c in COLUMNS], "rows": rows}, indent=2))
    chart = bar_chart(rows, output / "metrics.png")
    skipped = {task: reason for row in rows for task, reason in row.get("skipped", {}).items()}
    lines = [f"# {title}", "", markdown_table(rows), ""]
    lines.append("Cells: value [95% bootstrap CI], in % except tokens/question; n/a: not measured.")
    if skipped:
        lines += ["", "Skipped:"] + [f"- `{task}`: {reason}" for task, reason in sorted(skipped.items())]
    lines += ["", f"![metrics]({chart.name})", ""]
    report = output / "report.md"
    report.write_text("\n".join(lines))
    return {"metrics": metrics_path, "report": report, "chart": chart}
