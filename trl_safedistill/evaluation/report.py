"""The evaluation report: ``metrics.json``, ``report.md`` (one row per model/adapter) and ``metrics.png``.

``metrics.json`` schema: ``{"rows": [{"name", "model", "adapter", "format", "summary": {metric: {"value",
"ci", "n"} | null}, "tasks": {...}, "skipped": {task: reason}, "items": {...}, "compression_ratio",
"compression_stats"}], "columns": [...], "compression": {...}}``; see :mod:`.run` for the metrics.
Cells read ``value [low, high]`` (bootstrap 95% CI), ``n/a`` when the metric was not measured (e.g.
harmfulness without ``--guard``).

Rationale compression (TokenSkip, arXiv 2502.12067), only when a row is in the ``compressed`` format:
:func:`compression_section` compares every compressed row (prompted with ratio ``g``, its
``compression_ratio``) with one baseline row (named, else the first row in another format). Per row:

* rationale tokens before / after: ``T_1`` and ``T_g`` of the row's ``compression_stats`` (the
  ``OUT.report.json`` of ``trl-safedistill compress``, tokens under the scorer's tokenizer; see
  :mod:`trl_safedistill.data.compress`), and the realised keep ratio ``T_g / T_1``;
* generated tokens per question (``tokens_per_question``), the baseline's, and their ratio;
* each accuracy of :data:`COMPRESSION_METRICS`: the row's value, the baseline's, and the difference
  ``Δ = acc_row - acc_baseline`` with a paired percentile bootstrap 95% CI (:func:`paired_difference`)
  when both rows carry per-item scores (``items``) on the same items; otherwise ``diff_ci`` is
  ``None`` and ``diff_ci_note`` says why (the two per-metric CIs are still shown side by side).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..formats.compressed import ratio_key
from .stats import bootstrap_ci

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


#: (summary key, title) of the accuracies compared in the rationale compression section.
COMPRESSION_METRICS: tuple[tuple[str, str], ...] = (
    ("ind_acc", "IND acc (CoT)"),
    ("ood_acc", "OOD acc (CoT)"),
    ("ind_mc_acc", "IND acc (MC log-lik.)"),
    ("ood_mc_acc", "OOD acc (MC log-lik.)"),
)
NO_ITEMS_NOTE = "CI of the difference not computed: per-item scores missing in a row"
OTHER_ITEMS_NOTE = "CI of the difference not computed: the rows were scored on different items"


def load_compression_stats(path: str | Path) -> dict[str, Any]:
    """The stats of ``trl-safedistill compress`` (``OUT.report.json``), with ``path`` added.

    Raises ``ValueError`` when the file has no ``tokens_per_rationale`` holding the original length ``"1"``.
    """
    path = Path(path)
    try:
        stats = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"compression stats '{path}': {error}") from None
    if not isinstance(stats, dict) or "1" not in (stats.get("tokens_per_rationale") or {}):
        raise ValueError(f"compression stats '{path}': no tokens_per_rationale with key '1' (is it OUT.report.json of compress?)")
    return {**stats, "path": str(path)}


def paired_difference(row: Mapping[str, Any], baseline: Mapping[str, Any], key: str, iters: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``Δ = mean(x) - mean(y)`` for metric ``key`` of ``row`` (x) and ``baseline`` (y), and its CI.

    With per-item scores for the same items in both rows (``items[key]``, matched by id), the CI is the
    percentile bootstrap of the paired differences ``d_i = x_i - y_i`` (items resampled, both rows
    together): ``mean(d) = Δ``. Otherwise ``diff_ci`` is ``None`` and ``diff_ci_note`` says why.
    Returns ``{"value", "ci", "n", "baseline", "baseline_ci", "baseline_n", "diff", "diff_ci", "n_paired"}``.
    """
    mine = row.get("summary", {}).get(key) or {}
    theirs = baseline.get("summary", {}).get(key) or {}
    out: dict[str, Any] = {
        "value": mine.get("value"), "ci": mine.get("ci"), "n": mine.get("n"),
        "baseline": theirs.get("value"), "baseline_ci": theirs.get("ci"), "baseline_n": theirs.get("n"),
        "diff": None, "diff_ci": None, "n_paired": 0,
    }
    if out["value"] is None or out["baseline"] is None:
        return out
    out["diff"] = out["value"] - out["baseline"]
    x, y = (r.get("items", {}).get(key) for r in (row, baseline))
    if not x or not y:
        out["diff_ci_note"] = NO_ITEMS_NOTE
        return out
    xs, ys = dict(zip(x["ids"], x["values"])), dict(zip(y["ids"], y["values"]))
    if set(xs) != set(ys) or len(xs) != len(x["ids"]) or len(ys) != len(y["ids"]):
        out["diff_ci_note"] = OTHER_ITEMS_NOTE
        return out
    paired = bootstrap_ci([float(xs[i]) - float(ys[i]) for i in x["ids"]], iters, seed=seed)
    out["diff"], out["diff_ci"], out["n_paired"] = paired["value"], paired["ci"], paired["n"]
    if paired["ci"] is None:
        out["diff_ci_note"] = "CI of the difference not computed: no bootstrap resamples"
    return out


def compression_baseline(rows: Sequence[Mapping[str, Any]], name: str | None = None) -> Mapping[str, Any] | None:
    """The row named ``name``, else the first row not in the ``compressed`` format (``None`` if there is none)."""
    if name is not None:
        for row in rows:
            if row["name"] == name:
                return row
        raise ValueError(f"compression baseline '{name}' is not a row (rows: {[r['name'] for r in rows]})")
    return next((r for r in rows if r.get("format") != "compressed"), None)


def compression_section(
    rows: Sequence[Mapping[str, Any]], baseline: str | None = None, bootstrap_iters: int = 1000, seed: int = 0
) -> dict[str, Any] | None:
    """The rationale compression comparison (see the module doc), ``None`` without compressed rows.

    ``{"baseline": name | None, "baseline_metrics", "baseline_tokens_per_question", "rows": [{"name",
    "ratio", "stats", "rationale_tokens_before", "rationale_tokens_after", "rationale_keep_ratio",
    "tokens_per_question": {"value", "baseline", "ratio"}, "metrics": {key: paired_difference(...)}}]}``.
    """
    base = compression_baseline(rows, baseline)
    compared = [r for r in rows if r.get("format") == "compressed" and r is not base]
    if not compared:
        return None
    out_rows = []
    for row in compared:
        g = float(row.get("compression_ratio") or 1.0)
        stats = row.get("compression_stats") or {}
        tokens = stats.get("tokens_per_rationale") or {}
        before, after = tokens.get("1"), tokens.get(ratio_key(g))
        generated = (row["summary"].get("tokens_per_question") or {}).get("value")
        base_generated = ((base or {}).get("summary", {}).get("tokens_per_question") or {}).get("value")
        entry: dict[str, Any] = {
            "name": row["name"],
            "ratio": g,
            "stats": stats.get("path"),
            "rationale_tokens_before": before,
            "rationale_tokens_after": after,
            "rationale_keep_ratio": after / before if before and after is not None else None,
            "tokens_per_question": {
                "value": generated,
                "baseline": base_generated,
                "ratio": generated / base_generated if generated is not None and base_generated else None,
            },
            "metrics": {},
        }
        for key, _ in COMPRESSION_METRICS:
            if row["summary"].get(key) or (base or {}).get("summary", {}).get(key):
                entry["metrics"][key] = paired_difference(row, base or {"summary": {}}, key, bootstrap_iters, seed)
        out_rows.append(entry)
    summary = (base or {}).get("summary", {})
    return {
        "baseline": base["name"] if base is not None else None,
        "baseline_metrics": {k: summary[k] for k, _ in COMPRESSION_METRICS if summary.get(k)},
        "baseline_tokens_per_question": (summary.get("tokens_per_question") or {}).get("value"),
        "rows": out_rows,
    }


def _points(value: float | None, ci: Sequence[float] | None = None, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    text = f"{value * 100:+.1f}" if sign else f"{value * 100:.1f}"
    if ci:
        text += f" [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]" if sign else f" [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]"
    return text


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def compression_markdown(section: Mapping[str, Any]) -> str:
    """The "Rationale compression" part of ``report.md`` for :func:`compression_section`'s result."""
    keys = [(k, t) for k, t in COMPRESSION_METRICS if any(k in r["metrics"] for r in section["rows"])]
    header = "| model | g | rationale tokens before -> after (kept) | tokens/question (x baseline) | "
    header += " | ".join(f"{t} % (Δ [95% CI])" for _, t in keys) + " |"
    lines = ["## Rationale compression", "", header, "|" + "---|" * (4 + len(keys))]
    if section["baseline"] is not None:
        base = section["baseline_metrics"]
        cells = [_points(base[k]["value"], base[k].get("ci")) if k in base else "n/a" for k, _ in keys]
        generated = _number(section["baseline_tokens_per_question"])
        lines.append(f"| {section['baseline']} (baseline) | | | {generated} | " + " | ".join(cells) + " |")
    notes = set()
    for row in section["rows"]:
        kept = f" ({row['rationale_keep_ratio']:.0%})" if row["rationale_keep_ratio"] is not None else ""
        rationale = f"{_number(row['rationale_tokens_before'])} -> {_number(row['rationale_tokens_after'])}{kept}"
        if row["rationale_tokens_before"] is None:
            rationale = "n/a (no --compression-stats)"
        tpq = row["tokens_per_question"]
        generated = _number(tpq["value"]) + (f" (x{tpq['ratio']:.2f})" if tpq["ratio"] is not None else "")
        cells = []
        for key, _ in keys:
            metric = row["metrics"].get(key)
            if metric is None:
                cells.append("n/a")
                continue
            cell = _points(metric["value"], metric["ci"])
            if metric["diff"] is not None:
                cell += f" (Δ {_points(metric['diff'], metric['diff_ci'], sign=True)}" + ("" if metric["diff_ci"] else "*") + ")"
                if metric["diff_ci"] is None:
                    notes.add(metric.get("diff_ci_note", "CI of the difference not computed"))
            cells.append(cell)
        lines.append(f"| {row['name']} | {ratio_key(row['ratio'])} | {rationale} | {generated} | " + " | ".join(cells) + " |")
    lines += ["", "Rationale tokens: mean per training rationale under the compression scorer's tokenizer (`compress` stats);"
              " tokens/question: generated tokens per IND/OOD question; Δ: row minus baseline, in points, with a paired"
              " bootstrap 95% CI over the same items."]
    lines += [f"\\* {note}; both rows' own CIs are shown instead." for note in sorted(notes)]
    if section["baseline"] is None:
        lines.append("No baseline row (every row is compressed): differences not computed; see --compression-baseline.")
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


def write_report(
    rows: list[dict],
    output: Path | str,
    title: str = "trl-safedistill evaluation",
    compression_baseline: str | None = None,
    bootstrap_iters: int = 1000,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md`` and ``metrics.png`` into ``output``; returns their paths.

    With a row in the ``compressed`` format both files get the rationale compression comparison
    (:func:`compression_section` against ``compression_baseline``; ``metrics.json`` key ``compression``).
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    section = compression_section(rows, compression_baseline, bootstrap_iters)
    metrics_path = output / "metrics.json"
    metrics: dict[str, Any] = {"columns": [c[0] for c in COLUMNS], "rows": rows}
    if section is not None:
        metrics["compression"] = section
    metrics_path.write_text(json.dumps(metrics, indent=2))
    chart = bar_chart(rows, output / "metrics.png")
    skipped = {task: reason for row in rows for task, reason in row.get("skipped", {}).items()}
    lines = [f"# {title}", "", markdown_table(rows), ""]
    lines.append("Cells: value [95% bootstrap CI], in % except tokens/question; n/a: not measured.")
    if section is not None:
        lines += ["", compression_markdown(section)]
    if skipped:
        lines += ["", "Skipped:"] + [f"- `{task}`: {reason}" for task, reason in sorted(skipped.items())]
    lines += ["", f"![metrics]({chart.name})", ""]
    report = output / "report.md"
    report.write_text("\n".join(lines))
    return {"metrics": metrics_path, "report": report, "chart": chart}
