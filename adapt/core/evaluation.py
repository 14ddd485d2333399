"""Held-out metrics of a classifier's probabilities, and the confusion-matrix picture."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

logger = logging.getLogger(__name__)


def compute_metrics(probs: np.ndarray, labels: np.ndarray, classes, reject_threshold: float | None = None) -> dict:
    """accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1/support, ROC-AUC
    (two classes: probability of the second class as the score), confusion matrix (rows = true)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    classes = list(classes)
    idx = np.arange(len(classes))
    pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(labels, pred, labels=idx, zero_division=0)
    metrics = {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, labels=idx, average="macro", zero_division=0)),
        "per_class": {
            c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(labels, pred, labels=idx).tolist(),
        "labels": classes,
    }
    if len(classes) == 2 and len(np.unique(labels)) == 2:
        metrics["roc_auc"] = float(roc_auc_score(labels, probs[:, 1]))
    if reject_threshold is not None:
        accepted = probs.max(axis=1) >= reject_threshold
        metrics["reject_threshold"] = float(reject_threshold)
        metrics["needs_review_rate"] = float(1.0 - accepted.mean())
        metrics["accuracy_on_accepted"] = float((pred[accepted] == labels[accepted]).mean()) if accepted.any() else float("nan")
    return metrics


def choose_reject_threshold(probs: np.ndarray | None, labels: np.ndarray, target_accuracy: float = 0.95, max_review_rate: float = 0.5) -> float:
    """The lowest top-probability threshold whose accepted predictions reach ``target_accuracy``
    on the validation split, without sending more than ``max_review_rate`` of it to review.
    Falls back to the threshold that sends exactly ``max_review_rate`` when the target is out
    of reach, and to 0 (never review) without validation data."""
    if probs is None or len(labels) == 0:
        return 0.0
    top = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    order = np.argsort(-top)  # most confident first
    cum_acc = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    min_accepted = int(np.ceil((1.0 - max_review_rate) * len(order)))
    ok = [k for k in range(max(min_accepted, 1), len(order) + 1) if cum_acc[k - 1] >= target_accuracy]
    k = max(ok) if ok else max(min_accepted, 1)
    if k >= len(order):
        return 0.0  # everything accepted
    # threshold halfway between the last accepted and the first rejected confidence
    return float((top[order[k - 1]] + top[order[k]]) / 2)


def save_metrics(metrics: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return path


def save_confusion_matrix(cm, classes, path: str | Path, title: str = "") -> Path:
    """A labelled confusion-matrix PNG (counts and row-normalised colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True).clip(min=1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(2.2 + 1.1 * n, 1.8 + 1.0 * n), dpi=110)
    ax.imshow(cm / rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=30, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            share = cm[i, j] / rows[i, 0]
            ax.text(j, i, f"{cm[i, j]}\n{share:.0%}", ha="center", va="center", color="white" if share > 0.5 else "black", fontsize=9)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
