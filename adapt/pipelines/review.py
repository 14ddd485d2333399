"""The review budget of a retrain: the reject threshold the line asks for, and its risk-coverage curve.

The line says how many parts may go to human review (``--review-budget``) and how accurate the
automatically decided ones must be (``--target-accuracy``); ``adapt.core.evaluation.
choose_reject_threshold`` turns that into a confidence threshold on held-out probabilities of the
few-shot images (with ``--method auto`` the out-of-fold probabilities of its cross-validation,
else the method's validation split). The curve -- accuracy of the auto-decided parts against the
share sent to review -- is drawn for those estimates and for the held-out test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share sent to review, accuracy of the rest) as the threshold rises through the confidences."""
    top = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    order = np.argsort(-top, kind="stable")
    kept = np.arange(1, len(order) + 1)
    accuracy = np.cumsum(correct[order]) / kept
    return 1.0 - kept / len(order), accuracy


def save_risk_coverage(curves: dict[str, tuple[np.ndarray, np.ndarray]], threshold_points: dict[str, tuple[float, float]],
                       path: Path, title: str = "", budget: float | None = None, target: float | None = None) -> Path:
    """One line per ``curves[name] = (probs, labels)``; ``threshold_points[name] = (review share, accuracy)`` marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (probs, labels) in curves.items():
        review, accuracy = risk_coverage(probs, labels)
        line, = ax.plot(100 * review, 100 * accuracy, label=name)
        if name in threshold_points:
            r, a = threshold_points[name]
            ax.plot([100 * r], [100 * a], "o", color=line.get_color())
    if budget is not None:
        ax.axvline(100 * budget, color="grey", linestyle=":", label=f"review budget {budget:.0%}")
    if target is not None:
        ax.axhline(100 * target, color="grey", linestyle="--", label=f"target accuracy {target:.0%}")
    ax.set_xlabel("sent to review (%)")
    ax.set_ylabel("accuracy of the auto-decided parts (%)")
    ax.set_xlim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def at_threshold(probs: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(share sent to review, accuracy of the accepted) at ``threshold``."""
    accepted = probs.max(axis=1) >= threshold
    correct = probs.argmax(axis=1) == np.asarray(labels)
    return float(1.0 - accepted.mean()), float(correct[accepted].mean()) if accepted.any() else float("nan")
