"""The demo's report: ``metrics.json``, ``report.md``, figures, and the run's evidence units with their claims.

The final numbers are the **test** split's only (:mod:`.eval_stage`); curves read calibration data. The report folder
holds the same unit layout as the evidence run (``evidence/manifest.json``, ``evidence/seed<S>/<model>/unit.json``
and ``items.jsonl.gz``: :func:`write_units`), and every claim is decided by
:func:`.evidence_report.write_evidence_report` on those units alone: one evaluation path, one set of tests, at every
size. At the demo's sizes (one seed, a few dozen items per set) the claims come out "undecided because n is small";
that is the honest reading, and the report says so at the top.

Figures: ``safety_metrics.png`` (refusal, over-refusal by set, with Wilson 95% CIs), ``refusal_vs_step.png``
(calibration refusal over training, per method) and ``refusal_vs_learned.png`` (calibration refusal against IND MC
accuracy and held-out loss along each curve).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..atomic import write_json
from .schema import validate

FAMILY_STYLE = {
    "aligned": ("black", "o"),
    "standard": ("tab:red", "o"),
    "slowed": ("tab:green", "s"),
    "cascade": ("tab:purple", "^"),
    "answer_first": ("tab:orange", "v"),
    "lr_control": ("tab:blue", "D"),
    "data_mix": ("tab:brown", "P"),
}
#: demo family -> the evidence report's family (its control families are ``lower_lr`` and ``early_stop``)
EVIDENCE_FAMILY = {"lr_control": "lower_lr", "data_mix": "refusal_mix"}
ITEM_FLAGS = ("refusal", "refusal_gcg", "degenerate", "correct", "format_valid", "nll_sum", "tokens")
#: an adaptive student's ``ind_gen`` rows: the inference policy and, routed, the mode chosen (:mod:`.eval_stage`)
ITEM_LABELS = ("policy", "mode")


def item_flags(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-item rows without their text (the flags and numbers metrics.json keeps)."""
    return [{k: r[k] for k in ("kind", "set", "id", *ITEM_FLAGS, *ITEM_LABELS) if k in r} for r in rows]


def write_units(metrics: dict[str, Any], items_files: dict[str, str], directory: Path, seed: int) -> Path:
    """The evidence layout of one seed's models under ``directory`` (manifest, ``seed<S>/<model>/unit.json`` and a
    copy of each model's ``items.jsonl.gz``); returns ``directory``."""
    gate = metrics["gate"]
    write_json(directory / "manifest.json", {
        "size": metrics["run"]["size"], "seeds": [seed], "models": [m["name"] for m in metrics["models"]],
        "margin": 0.05, "alpha": 0.05, "judge": metrics["judge"],
        "gate": {str(seed): {k: gate.get(k) for k in ("passed", "message", "refusal", "over_refusal", "lookalike_over_refusal")}},
    })
    for model in metrics["models"]:
        folder = directory / f"seed{seed}" / model["name"]
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "unit.json", {
            "model": model["name"], "label": model["label"], "family": EVIDENCE_FAMILY.get(model["family"], model["family"]),
            "seed": seed, "learning_rate": model["learning_rate"], "step": None, "settings": model["settings"],
            "train": model["train"], "wall_seconds": None,
        })
        shutil.copyfile(items_files[model["name"]], folder / "items.jsonl.gz")
        (folder / "items.jsonl.gz").chmod(0o600)
    return directory


def _value(model: dict[str, Any] | None, metric: str) -> float | None:
    if not model:
        return None
    entry = model["metrics"].get(metric) or model["safety"].get(metric)
    return None if not isinstance(entry, dict) else entry.get("value")


def plot_all(metrics: dict[str, Any], directory: Path) -> list[str]:
    """Write the three PNGs; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = metrics["models"]
    names = []
    # 1. safety by set
    kinds = {name: entry["kind"] for m in models for name, entry in m["safety"]["sets"].items()}
    sets = sorted(kinds, key=lambda n: (kinds[n], n))
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(sets) + 4), 4.8))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        entries = [(model["safety"]["sets"].get(n) or {}).get("refusal") or {} for n in sets]
        values = [e.get("value") or 0.0 for e in entries]
        errors = [[max(0.0, (e.get("value") or 0) - e["ci"][0]) if e.get("ci") else 0.0 for e in entries],
                  [max(0.0, e["ci"][1] - (e.get("value") or 0)) if e.get("ci") else 0.0 for e in entries]]
        positions = [j + (i - (len(models) - 1) / 2) * width for j in range(len(sets))]
        ax.bar(positions, values, width, yerr=errors, capsize=2, label=model["label"])
    labels = [f"{n} ({kinds[n]})" for n in sets]
    ax.set_xticks(range(len(sets)), labels, rotation=15, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share refused, test split (Wilson 95% CI)")
    ax.set_title(f"Refusal by set: harmful (higher is safer), benign (lower is better) - {metrics['run']['model']}")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(directory / "safety_metrics.png", dpi=120)
    plt.close(fig)
    names.append("safety_metrics.png")
    # 2. refusal vs step
    students = [m for m in models if m["kind"] == "student" and m["curve"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model in students:
        color, marker = FAMILY_STYLE.get(model["family"], ("gray", "o"))
        linestyle = "--" if model["format"] == "cascade" else "-"
        steps = [p["step"] for p in model["curve"]]
        ax.plot(steps, [p["refusal"] for p in model["curve"]], marker=marker, linestyle=linestyle, label=model["label"],
                color=color if model["family"] not in ("lr_control",) else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("refusal of calibration harmful prompts")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Refusal over distillation")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(directory / "refusal_vs_step.png", dpi=120)
    plt.close(fig)
    names.append("refusal_vs_step.png")
    # 3. refusal vs learned
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for model in students:
        color, marker = FAMILY_STYLE.get(model["family"], ("gray", "o"))
        linestyle = "--" if model["format"] == "cascade" else "-"
        kwargs = {"marker": marker, "linestyle": linestyle, "label": model["label"]}
        if model["family"] != "lr_control":
            kwargs["color"] = color
        axes[0].plot([p["ind_mc_acc"] for p in model["curve"]], [p["refusal"] for p in model["curve"]], **kwargs)
        axes[1].plot([p["heldout_loss"] for p in model["curve"]], [p["refusal"] for p in model["curve"]], **kwargs)
    axes[0].set_xlabel("IND accuracy (MC log-likelihood, held-out bbh-cot)")
    axes[1].set_xlabel("held-out rationale loss (nats/token; lower = learned more)")
    axes[1].invert_xaxis()
    for ax in axes:
        ax.set_ylabel("refusal of calibration harmful prompts")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_title("Refusal vs what was learned (curves over training)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(directory / "refusal_vs_learned.png", dpi=120)
    plt.close(fig)
    names.append("refusal_vs_learned.png")
    return names


# ---------------------------------------------------------------------------------------------- report


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    text = f"{100 * entry['value']:.1f}"
    if entry.get("ci"):
        text += f" [{100 * entry['ci'][0]:.0f}, {100 * entry['ci'][1]:.0f}]"
    return text


def _agreement(judge: dict[str, Any]) -> str:
    return (f"`{judge['name']}`: accuracy {_cell(judge['accuracy'])}, precision {_cell(judge['precision'])}, recall "
            f"{_cell(judge['recall'])}, F1 {100 * judge['f1']['value']:.1f} (n = {judge['n']} human labels, {judge['scheme']})")


def markdown(metrics: dict[str, Any], figures: list[str], evidence_md: str) -> str:
    """``report.md``: the gate verdict and the smoke-size warning first, then the tables, the claims, the figures."""
    run, data, gate, judge = metrics["run"], metrics["data"], metrics["gate"], metrics["judge"]
    s = run["settings"]
    lines = [
        f"# trl-safedistill demo: {run['model']} (size `{run['size']}`)",
        "",
        f"**Align gate (calibration split): {'passed' if gate['passed'] else 'FAILED'}.** {gate['message']}",
        "",
        f"**Seeds: 1; items per safety set: {s['n_safety'] or 'all'}.** One seed cannot decide a claim across seeds "
        "(TOST needs >= 2, the evidence protocol asks for 3): the claims below are stated with their tests, and at "
        "this size they are undecided whatever the point estimates look like. The evidence run decides them.",
        "",
        f"Command: `{run['command']}`  ",
        f"Created {run['created']} on {run.get('device', '?')}; wall time {run['wall_seconds'] / 60:.1f} min "
        f"(the stages' own times{_parallel_note(run)}).",
        "",
        "## Settings",
        "",
        f"- student: `{run['model']}`, {'LoRA r=' + str(s['lora_r']) + ' on all linear layers' if run['peft'] else 'full fine-tuning'}"
        f"{', 4-bit NF4 (QLoRA)' if s.get('load_in_4bit') else ''}",
        f"- alignment: {s['align_steps']} steps, batch {s['align_batch']}, lr {s['align_lr']}, {s['align_harmful']} composed "
        f"refusals + {s['align_benign']} benign answers (protocol align parts), merged",
        f"- distillation: {s['distil_steps']} steps, batch {s['distil_batch']}, lr {s['distil_lr']}, max length {s['max_length']}, "
        f"seed {s['seed']}; the same {data['train_records']} bbh-cot training records for every method",
        f"- curves (calibration data): every {s['curve_every']} steps on {s['curve_n_harmful']} calibration AdvBench prompts and as "
        f"many look-alikes, {s['curve_n_ind']} IND MC items, {s['curve_n_loss']} calibration rationales",
        f"- final evaluation (test split): {s['n_safety'] or 'all'} prompts per protocol safety task ({s['safety_gen_tokens']} greedy "
        f"tokens), {s['n_ind_mc']} IND MC, {s['n_ind_gen']} IND exact-match ({s['reasoning_gen_tokens']} tokens), "
        f"{s['n_nll'] or 'all'} test rationales (NLL), {s['n_ood_mc']} OOD MC items",
        "",
        "## Safety on the test split (%, Wilson 95% CI)",
        "",
        "Judge: " + _agreement(judge["default"]) + ". Reference column: " + _agreement(judge["reference"]) + ".",
        "",
        "| model | refusal (harmful) | over-refusal (benign) | balance | over-refusal (look-alikes) | degenerate | refusal (GCG ref.) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in metrics["models"]:
        safety = model["safety"]
        look = (safety["sets"].get("lookalike") or {}).get("refusal")
        degenerate = {"value": None}
        if safety["degenerate_harmful"] and safety["degenerate_benign"]:
            n = safety["degenerate_harmful"]["n"] + safety["degenerate_benign"]["n"]
            k = safety["degenerate_harmful"]["successes"] + safety["degenerate_benign"]["successes"]
            degenerate = {"value": k / n if n else None, "ci": None}
        balance = "-" if safety["balance"] is None else f"{100 * safety['balance']:+.1f}"
        lines.append(f"| {model['label']} | {_cell(safety['refusal'])} | {_cell(safety['over_refusal'])} | {balance} | "
                     f"{_cell(look)} | {_cell(degenerate)} | {_cell(safety['refusal_gcg'])} |")
    lines += ["", "## Capability on the test split", "",
              "| model | held-out NLL per token (mean over rationales, 95% CI) | IND MC % | IND exact match % | format-valid % | OOD MC % |",
              "|---|---|---|---|---|---|"]
    for model in metrics["models"]:
        m = model["metrics"]
        nll = m.get("heldout_nll") or {}
        nll_text = "-" if nll.get("value") is None else f"{nll['value']:.4f}" + (f" [{nll['ci'][0]:.4f}, {nll['ci'][1]:.4f}]" if nll.get("ci") else "")
        lines.append(f"| {model['label']} | {nll_text} | {_cell(m.get('ind_mc_acc'))} | {_cell(m.get('ind_acc'))} | "
                     f"{_cell(m.get('format_valid'))} | {_cell(m.get('ood_mc_acc'))} |")
    lines += ["", "## Claims (from the units in `evidence/`, by `trl_safedistill.experiments.evidence_report`)", "",
              evidence_md.strip(), "", "## Figures", ""]
    lines += [f"![{name}]({name})" for name in figures]
    ood = data["ood"]
    cap = data["capability"]
    lines += [
        "",
        "## Notes",
        "",
        f"- IND: bbh-cot held-out items split by hash into calibration ({cap['calibration']['ind_mc']} MC, "
        f"{cap['calibration']['heldout_records']} rationales; curves only) and test ({cap['test']['ind_mc']} MC, "
        f"{cap['test']['ind_gen']} exact-match, {cap['test']['heldout_records']} rationales; final evaluation only).",
        "- OOD: " + ("MMLU multiple-choice questions over 57 subjects (lm-eval's chain-of-thought prompts)." if ood["available"]
                     else f"not available offline ({ood['reason']})."),
        "- Safety: the protocol's test tasks (harmful: AdvBench, HarmBench, Do-Not-Answer, wrapped; benign: look-alikes, "
        "imperatives, yes/no questions), judged by the default judge on the first 48 words; degenerate output is never a "
        "refusal. Per-item responses: `evidence/seed*/*/items.jsonl.gz` (0600), not here.",
        "- Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in run["stage_seconds"].items()),
    ]
    return "\n".join(lines) + "\n"


def _parallel_note(run: dict[str, Any]) -> str:
    groups = run.get("parallel_groups") or {}
    return "".join(f"; the {len(g['stages'])} {name} stages ran {g['workers']} at a time and count once, "
                   f"{g['seconds'] / 60:.1f} min" for name, g in groups.items() if g["workers"] > 1)


def write_report(metrics: dict[str, Any], directory: Path, items_files: dict[str, str]) -> dict[str, Any]:
    """Write the evidence units and their claims, ``metrics.json``, the figures and ``report.md`` into ``directory``."""
    from ..atomic import write_text
    from .evidence_report import write_evidence_report

    directory.mkdir(parents=True, exist_ok=True)
    evidence_dir = write_units(metrics, items_files, directory / "evidence", metrics["run"]["settings"]["seed"])
    summary = write_evidence_report(evidence_dir)
    metrics["evidence"] = {"claims": summary["claims"], "models": summary["models"]}
    validate(metrics)
    write_json(directory / "metrics.json", metrics)
    figures = plot_all(metrics, directory)
    evidence_md = (evidence_dir / "REPORT.md").read_text(encoding="utf-8")
    write_text(directory / "report.md", markdown(metrics, figures, evidence_md))
    return {"files": ["metrics.json", "report.md", "evidence/REPORT.md", *figures]}
