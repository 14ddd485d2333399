"""The semi-supervised candidates that lost on the dev split (results.md), kept for the study:
plain centering, PCA whitening and self-training with confidence-thresholded pseudo-labels.
The shipped ones (cluster centering, label spreading) are in ``adapt.methods.semisup``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

from adapt.methods.semisup import fit_logistic, l2_normalize


@dataclass(frozen=True)
class Centering:
    """``x -> normalize(x - mean)`` with ``mean`` estimated on unlabeled features."""

    mean: np.ndarray

    @classmethod
    def fit(cls, unlabeled: np.ndarray) -> "Centering":
        return cls(np.asarray(unlabeled, dtype=np.float64).mean(axis=0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return l2_normalize(np.asarray(x, dtype=np.float64) - self.mean)


@dataclass(frozen=True)
class Whitening:
    """``x -> normalize(((x - mean) @ V) / sqrt(eigenvalues + eps))`` with the top ``dim`` principal
    directions of the unlabeled features."""

    mean: np.ndarray
    projection: np.ndarray  # [D, dim], scaled by 1 / sqrt(eigenvalue + eps)

    @classmethod
    def fit(cls, unlabeled: np.ndarray, dim: int, eps: float = 1e-4) -> "Whitening":
        u = np.asarray(unlabeled, dtype=np.float64)
        mean = u.mean(axis=0)
        cov = np.cov(u - mean, rowvar=False)
        vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1][: min(dim, u.shape[1])]
        return cls(mean, vecs[:, order] / np.sqrt(vals[order] + eps * vals.max()))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return l2_normalize((np.asarray(x, dtype=np.float64) - self.mean) @ self.projection)


def pseudo_labels(model: LogisticRegression, unlabeled: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(indices into ``unlabeled``, predicted labels) of the predictions with confidence >= ``threshold``."""
    probs = model.predict_proba(unlabeled)
    keep = np.flatnonzero(probs.max(axis=1) >= threshold)
    return keep, model.classes_[probs[keep].argmax(axis=1)]


def self_train(x: np.ndarray, y: np.ndarray, unlabeled: np.ndarray, c: float, threshold: float, *,
               pseudo_weight: float = 1.0, rounds: int = 1, seed: int = 0, max_iter: int = 2000,
               base: LogisticRegression | None = None) -> tuple[LogisticRegression, int]:
    """Self-training with confidence-thresholded pseudo-labels; returns the model and how many
    unlabeled images it used in the last round. Each class's pseudo-labels together weigh
    ``pseudo_weight`` times that class's labelled images, so classes stay balanced."""
    model = base if base is not None else fit_logistic(x, y, c, seed=seed, max_iter=max_iter)
    used = 0
    for _ in range(rounds):
        keep, guessed = pseudo_labels(model, unlabeled, threshold)
        used = len(keep)
        if used == 0:
            break
        weights = [np.ones(len(y))]
        for cls in np.unique(guessed):
            n_cls = int(np.sum(guessed == cls))
            weights.append(np.full(n_cls, pseudo_weight * max(1, int(np.sum(y == cls))) / n_cls))
        order = np.concatenate([np.flatnonzero(guessed == cls) for cls in np.unique(guessed)])
        xs = np.concatenate([x, unlabeled[keep][order]])
        ys = np.concatenate([y, guessed[order]])
        model = fit_logistic(xs, ys, c, seed=seed, max_iter=max_iter, sample_weight=np.concatenate(weights))
    return model, used
