"""Semi-supervised few-shot fitting on frozen features: unlabeled images of the same line help.

Plain numpy + scikit-learn on L2-normalised feature vectors (no torch), shared by the ``linear``
method and the study in ``experiments/unlabeled/``:

- ``ClusterCentering``: k-means on the unlabeled features, each image centred on its nearest
  cluster's mean and L2-normalised again. A generic ImageNet trunk puts all solar cells in a
  narrow cone; centering on the line's own images spreads them out so a few labels go further.
- ``label_spread``: scikit-learn ``LabelSpreading`` on a k-NN graph over labelled + unlabeled
  features, then a logistic regression on the spread labels (so the result is still one linear
  head).

``fit_semisupervised`` is what ``adapt retrain --method linear --unlabeled`` ships (centering
variants x label spreading x C, chosen on the few-shot validation split). The candidates that
lost on the dev split (plain centering, whitening, self-training; experiments/unlabeled/results.md)
live with that study, in ``experiments/unlabeled/candidates.py``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class ClusterCentering:
    """``x -> normalize(x - centroid(x))``: k-means on the unlabeled features, each image centred on
    its nearest cluster's mean (a line's sub-populations, e.g. module types, stop dominating)."""

    centroids: np.ndarray  # [k, D]

    @classmethod
    def fit(cls, unlabeled: np.ndarray, k: int, seed: int = 0) -> "ClusterCentering":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(np.asarray(unlabeled, dtype=np.float64))
        return cls(km.cluster_centers_)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        nearest = ((x[:, None, :] - self.centroids[None]) ** 2).sum(-1).argmin(axis=1)
        return l2_normalize(x - self.centroids[nearest])


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, *, seed: int = 0, max_iter: int = 2000,
                 sample_weight: np.ndarray | None = None) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(x, y, sample_weight=sample_weight)


def label_spread(x: np.ndarray, y: np.ndarray, unlabeled: np.ndarray, *, neighbors: int = 10, alpha: float = 0.5,
                 max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Labels (and their confidence) that ``LabelSpreading`` gives the unlabeled features."""
    from sklearn.semi_supervised import LabelSpreading

    xs = np.concatenate([x, unlabeled])
    ys = np.concatenate([y, -np.ones(len(unlabeled), dtype=np.int64)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        spread = LabelSpreading(kernel="knn", n_neighbors=neighbors, alpha=alpha, max_iter=max_iter).fit(xs, ys)
    dist = spread.label_distributions_[len(x):]
    return spread.classes_[dist.argmax(axis=1)], dist.max(axis=1)


@dataclass
class SemiSupervisedFit:
    """The chosen head: ``centroids`` (``None``: features used as they are) then ``model``."""

    centroids: np.ndarray | None
    model: LogisticRegression
    params: dict
    val_probabilities: np.ndarray | None

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) if self.centroids is None else ClusterCentering(self.centroids)(x)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self.transform(x))


def fit_semisupervised(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, unlabeled: np.ndarray, *,
                       c_grid, clusters=(0, 1, 2), spread_neighbors=(0, 10), seed: int = 0, max_iter: int = 2000,
                       score=None, report=None) -> SemiSupervisedFit:
    """Choose, on the few-shot validation split, how the unlabeled features enter a logistic regression:

    - ``clusters``: 0 = features as they are, 1 = centred on the unlabeled mean, k = centred on the
      nearest of k k-means centroids of the unlabeled features;
    - ``spread_neighbors``: 0 = fit on the labelled images only, n = also on the unlabeled ones with
      the labels ``LabelSpreading`` (n-NN graph) gives them, weighted class-balanced;
    - ``C`` from ``c_grid``.

    ``score(probs, labels)`` sorts higher-is-better (default: balanced accuracy, then log-loss);
    ``report(params, score, step)`` sees every candidate. The first candidate wins ties, and the
    candidates are ordered plain first, so the unlabeled data must earn its place on validation.
    """
    from adapt.methods.frozen import selection_score

    score = score or selection_score
    x, xv, unlabeled = (np.asarray(a, dtype=np.float64) for a in (x, xv, unlabeled))
    best, step = None, 0
    for k in clusters:
        centroids = None if k == 0 else ClusterCentering.fit(unlabeled, k, seed=seed).centroids
        t = (lambda a: a) if centroids is None else ClusterCentering(centroids)
        xl, xval, u = t(x), t(xv), t(unlabeled)
        for neighbors in spread_neighbors:
            if neighbors:
                guessed, _ = label_spread(xl, y, u, neighbors=neighbors)
                xs, ys = np.concatenate([xl, u]), np.concatenate([y, guessed])
                weights = np.concatenate([np.ones(len(y)), _class_balanced(guessed, y)])
            else:
                xs, ys, weights = xl, y, None
            for c in c_grid:
                model = fit_logistic(xs, ys, c, seed=seed, max_iter=max_iter, sample_weight=weights)
                params = {"clusters": k, "spread_neighbors": neighbors, "C": float(c)}
                probs = model.predict_proba(xval) if len(yv) else None
                s = score(probs, yv) if len(yv) else (0.0, 0.0)
                if report is not None:
                    report(params, s, step)
                step += 1
                if best is None or s > best[0]:
                    best = (s, SemiSupervisedFit(centroids, model, params, probs))
    return best[1]


def _class_balanced(guessed: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weights that give each guessed class the total weight of its labelled images."""
    w = np.zeros(len(guessed))
    for cls in np.unique(guessed):
        m = guessed == cls
        w[m] = max(1, int(np.sum(y == cls))) / m.sum()
    return w
