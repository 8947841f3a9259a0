"""Guard metrics: F1 at a threshold and AUPRC (average precision), and a PR-curve PNG.

As in HarmAug (arXiv 2410.01524): the positive class is *unsafe* (label 1); F1 is computed from the
predictions ``1[score > threshold]`` (threshold 0.5, i.e. the arg-max of a two-class guard) and
AUPRC is scikit-learn's average precision ``sum_n (R_n - R_{n-1}) P_n`` over the score thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def guard_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> dict[str, float | None]:
    """``f1``, ``auprc``, ``precision``, ``recall``, ``accuracy``, ``n``, ``positives`` (AUPRC is None without positives)."""
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

    y = [int(v) for v in labels]
    predictions = [int(s > threshold) for s in scores]
    positives = sum(y)
    return {
        "n": len(y),
        "positives": positives,
        "f1": float(f1_score(y, predictions, zero_division=0.0)),
        "precision": float(precision_score(y, predictions, zero_division=0.0)),
        "recall": float(recall_score(y, predictions, zero_division=0.0)),
        "accuracy": sum(int(p == t) for p, t in zip(predictions, y)) / max(1, len(y)),
        "auprc": float(average_precision_score(y, list(scores))) if 0 < positives else None,
    }


def plot_pr_curves(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: str | Path) -> Path:
    """One PNG with a precision-recall curve per named ``(labels, scores)`` set; sets without positives are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(5, 4))
    for name, (labels, scores) in curves.items():
        if not any(labels):
            continue
        precision, recall, _ = precision_recall_curve(list(labels), list(scores))
        ap = average_precision_score(list(labels), list(scores))
        axis.step(recall, precision, where="post", label=f"{name} (AUPRC {ap:.3f})")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_title("guard: precision-recall (positive = unsafe)")
    if axis.lines:
        axis.legend(loc="lower left", fontsize=8)
    else:
        axis.text(0.5, 0.5, "no set with unsafe examples", ha="center", va="center")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
