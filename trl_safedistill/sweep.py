"""``trl-safedistill sweep``: SLowED settings against refusal and what was learned, one point per setting.

Reuses a demo run folder (``--output-dir``, default ``runs/demo-<size>``): its data, aligned start and step-0
point (run first when missing). Each setting distils ``standard`` CoT + SLowED with the run's steps, data and
seed, as a cached stage ``sweep:<id>``; its last curve point (refusal of held-out harmful prompts, IND MC
accuracy on held-out bbh-cot, held-out rationale loss) is the setting's point. The grid is the product of
``--grid FIELD=v1,v2`` axes over SafeDistillConfig fields; the default axes are the entropy-mask fraction, the
drift budget and its per-epoch schedule (growth)::

    entropy_mask_quantile = 0 (off), 0.5
    slow_tuning_budget    = 0.01, 0.05
    slow_tuning_budget_growth = 1.0

plus the plain ``standard`` run as the reference. ``entropy_mask_quantile=0`` turns masking off and
``slow_tuning_budget=0`` turns slow tuning off for that point.

Best setting: the highest IND MC accuracy (then the lowest held-out loss) among points whose refusal is within
5 points of the aligned start; if none is, the highest refusal. Writes ``sweep.json`` and ``sweep.png``
(refusal vs IND accuracy and vs held-out loss) into ``<run>/sweep/``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

from .pipeline.methods import Method
from .pipeline.sizes import SIZES, get_size
from .pipeline.stages import StageError, write_json

DEFAULT_GRID: dict[str, list[float]] = {
    "entropy_mask_quantile": [0.0, 0.5],
    "slow_tuning_budget": [0.01, 0.05],
    "slow_tuning_budget_growth": [1.0],
}
TOLERANCE = 0.05


def parse_grid(items: list[str]) -> dict[str, list[float]]:
    """``["slow_tuning_budget=0.01,0.05"]`` -> ``{"slow_tuning_budget": [0.01, 0.05]}`` (defaults for the rest)."""
    grid = dict(DEFAULT_GRID)
    for item in items:
        key, _, values = item.partition("=")
        if not values:
            raise ValueError(f"--grid needs FIELD=v1,v2, got '{item}'")
        grid[key.strip()] = [float(v) for v in values.split(",") if v.strip()]
    return grid


def setting_config(setting: dict[str, float]) -> dict[str, Any]:
    """SafeDistillConfig overrides for one grid point (quantile 0 / budget 0 switch that module off)."""
    config: dict[str, Any] = {"distill_format": "standard"}
    for key, value in setting.items():
        config[key] = value
    quantile = setting.get("entropy_mask_quantile", 0.0)
    config["entropy_mask_mode"] = "fraction" if quantile > 0 else "off"
    budget = setting.get("slow_tuning_budget", 0.0)
    config["slow_tuning_rule"] = "project" if budget > 0 else "off"
    if budget <= 0:
        config.pop("slow_tuning_budget", None)
    return config


def setting_id(setting: dict[str, float]) -> str:
    short = {"entropy_mask_quantile": "q", "slow_tuning_budget": "b", "slow_tuning_budget_growth": "g",
             "entropy_mask_threshold": "t", "learning_rate": "lr"}
    return "-".join(f"{short.get(k, k)}{v:g}" for k, v in sorted(setting.items()))


def best_point(points: list[dict[str, Any]], aligned_refusal: float) -> dict[str, Any] | None:
    """The recommended setting (see the module docstring)."""
    safe = [p for p in points if p["refusal"] >= aligned_refusal - TOLERANCE and p["id"] != "standard"]
    if safe:
        return max(safe, key=lambda p: (p["ind_mc_acc"], -p["heldout_loss"]))
    candidates = [p for p in points if p["id"] != "standard"]
    return max(candidates, key=lambda p: (p["refusal"], p["ind_mc_acc"])) if candidates else None


def plot(points: list[dict[str, Any]], aligned: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key, label in ((axes[0], "ind_mc_acc", "IND accuracy (MC log-likelihood)"),
                           (axes[1], "heldout_loss", "held-out rationale loss (lower = learned more)")):
        ax.scatter([aligned[key]], [aligned["refusal"]], color="black", marker="*", s=120, label="aligned start")
        for p in points:
            color = "tab:red" if p["id"] == "standard" else ("tab:green" if p.get("best") else "tab:blue")
            ax.scatter([p[key]], [p["refusal"]], color=color)
            ax.annotate(p["id"], (p[key], p["refusal"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("refusal of held-out harmful prompts")
        ax.set_ylim(-0.02, 1.02)
    axes[1].invert_xaxis()
    axes[0].set_title("SLowED sweep: one point per setting (red: standard, green: best)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trl-safedistill sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="default", choices=sorted(SIZES))
    parser.add_argument("--output-dir", default=None, help="the demo run folder to reuse (default runs/demo-<size>)")
    parser.add_argument("--grid", action="append", default=[], metavar="FIELD=v1,v2", help="a grid axis (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a size field")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        grid = parse_grid(args.grid)
        size = get_size(args.size, dict(item.split("=", 1) for item in args.set))
    except ValueError as error:
        print(f"trl-safedistill sweep: {error}", file=sys.stderr)
        return 2
    from .pipeline.run import DemoPipeline

    run_dir = Path(args.output_dir or f"runs/demo-{size.name}")
    keys = sorted(grid)
    settings = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    pipeline = DemoPipeline(size, run_dir, method_names=["standard"], quiet=args.quiet)
    pipeline.progress.stages = ["prepare", "align", "curve0", "distil:standard"] + [f"sweep:{setting_id(s)}" for s in settings]
    try:
        pipeline.run_start()
        points = [_point("standard", {}, pipeline.run_distil(pipeline.methods[0]))]
        for setting in settings:
            method = Method(f"sweep-{setting_id(setting)}", setting_id(setting),
                            {"learning_rate": size.distil_lr, **setting_config(setting)}, family="slowed")
            result = pipeline.run_distil(method, stage=f"sweep:{setting_id(setting)}")
            points.append(_point(setting_id(setting), setting, result))
    except StageError as error:
        print(f"trl-safedistill sweep: stopped: {error}", file=sys.stderr)
        return error.exit_code
    aligned = pipeline.runner.result("curve0")
    best = best_point(points, aligned["refusal"])
    for p in points:
        p["best"] = best is not None and p["id"] == best["id"]
    out = run_dir / "sweep"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", {"aligned": aligned, "grid": grid, "points": points, "best": best,
                                    "rule": f"max IND MC acc with refusal >= aligned - {TOLERANCE}; else max refusal"})
    plot(points, aligned, out / "sweep.png")
    print(json.dumps({"best": best}, indent=1))
    print(f"sweep: {out / 'sweep.json'}, {out / 'sweep.png'}")
    return 0


def _point(identifier: str, setting: dict[str, float], result: dict[str, Any]) -> dict[str, Any]:
    last = result["curve"][-1]
    return {"id": identifier, "setting": setting, "step": last["step"], "refusal": last["refusal"],
            "ind_mc_acc": last["ind_mc_acc"], "heldout_loss": last["heldout_loss"]}


if __name__ == "__main__":
    sys.exit(main())
