"""Plot SLowED's training metrics: drift and masked fraction per epoch, from ``trainer_state.json``'s log history.

Reads the ``slow_tuning/*`` metrics (:mod:`.slow_tuning`) and the masking statistic (any log key ending in
``masked_fraction``, e.g. ``entropy_mask/masked_fraction``) of ``log_history`` and writes one PNG with two panels
sharing the epoch axis: drift (mean and max over layers after correction, max before correction, budget) and
the masked fraction. Per-step values are drawn as lines, per-epoch aggregates (mean over the epoch's log
entries; for drift the end-of-epoch value when ``slow_tuning/epoch_drift_*`` was logged) as markers.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Any

DRIFT_KEYS = ("slow_tuning/drift_mean", "slow_tuning/drift_max", "slow_tuning/drift_max_before", "slow_tuning/budget")


def load_log_history(source: str | os.PathLike | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``log_history`` from a list, a ``trainer_state.json`` file, or a folder containing one (a checkpoint or
    an output_dir: the newest ``checkpoint-*/trainer_state.json`` is used when the folder has none itself)."""
    if isinstance(source, list):
        return source
    path = os.fspath(source)
    if os.path.isdir(path):
        direct = os.path.join(path, "trainer_state.json")
        if os.path.isfile(direct):
            path = direct
        else:
            ckpts = [d for d in os.listdir(path) if d.startswith("checkpoint-") and d.split("-")[-1].isdigit()]
            if not ckpts:
                raise FileNotFoundError(f"no trainer_state.json in {path}")
            newest = max(ckpts, key=lambda d: int(d.split("-")[-1]))
            path = os.path.join(path, newest, "trainer_state.json")
    with open(path) as fh:
        return json.load(fh)["log_history"]


def _masked_key(entry: dict[str, Any]) -> str | None:
    return next((k for k in entry if k.endswith("masked_fraction")), None)


def per_epoch_summary(history: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """{epoch index: {metric: value}}: per-epoch mean of the logged drift and masked-fraction values, and the
    end-of-epoch drift (``epoch_drift_mean`` / ``epoch_drift_max``) when the callback logged it."""
    sums: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for entry in history:
        if "epoch" not in entry:
            continue
        epoch = max(0, math.ceil(entry["epoch"] - 1e-9) - 1)
        for key in DRIFT_KEYS:
            if key in entry:
                sums[epoch][key].append(float(entry[key]))
        mk = _masked_key(entry)
        if mk:
            sums[epoch]["masked_fraction"].append(float(entry[mk]))
        if "slow_tuning/epoch_index" in entry:
            idx = int(entry["slow_tuning/epoch_index"])
            for key in ("epoch_drift_mean", "epoch_drift_max"):
                if f"slow_tuning/{key}" in entry:
                    sums[idx][key].append(float(entry[f"slow_tuning/{key}"]))
    return {e: {k: sum(v) / len(v) for k, v in m.items()} for e, m in sorted(sums.items())}


def plot_slowed(source: str | os.PathLike | list[dict[str, Any]], out_png: str | os.PathLike) -> str:
    """Write a PNG of drift and masked fraction against epochs; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = load_log_history(source)
    epochs = per_epoch_summary(history)
    fig, (ax_d, ax_m) = plt.subplots(2, 1, sharex=True, figsize=(7, 6))
    for key, style in zip(DRIFT_KEYS, ("-", "-", ":", "--")):
        pts = [(e["epoch"], e[key]) for e in history if key in e and "epoch" in e]
        if pts:
            ax_d.plot(*zip(*pts), style, label=key.split("/")[-1])
    for key, marker in (("epoch_drift_mean", "o"), ("epoch_drift_max", "s")):
        pts = [(e + 1, m[key]) for e, m in epochs.items() if key in m]
        if pts:
            ax_d.plot(*zip(*pts), marker, label=f"{key} (end of epoch)")
    ax_d.set_ylabel("drift (fraction of unit)")
    ax_d.set_title("Slow tuning: drift")
    pts = [(e["epoch"], e[_masked_key(e)]) for e in history if _masked_key(e) and "epoch" in e]
    if pts:
        ax_m.plot(*zip(*pts), "-", label="masked fraction")
    pts = [(e + 1, m["masked_fraction"]) for e, m in epochs.items() if "masked_fraction" in m]
    if pts:
        ax_m.plot(*zip(*pts), "o", label="epoch mean")
    ax_m.set_ylabel("masked fraction")
    ax_m.set_xlabel("epoch")
    ax_m.set_title("Low-entropy masking")
    for ax in (ax_d, ax_m):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return save_figure(fig, out_png)


def save_figure(fig, out_png) -> str:
    """Lay out, write (folders made) and close a matplotlib figure; returns the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = os.fspath(out_png)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
