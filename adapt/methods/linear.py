"""Linear probe: logistic regression on cached, frozen, L2-normalised image features.

How the inverse regularisation strength ``C`` is chosen (``--hp select``):

- ``cv`` (the default): sklearn's ``GridSearchCV`` over ``c_grid`` with repeated stratified k-fold
  over *all* labelled few-shot images (train + val), ranked by balanced accuracy, then log-loss;
  the chosen C is refit on all of them. The probabilities for the reject threshold are the
  out-of-fold predictions at that C (first repeat: each image predicted once, by a model that did
  not see it). 16 validation images per class are too few to choose with (about +-5 points seed
  to seed), and they are 16 more to learn from.
- ``val``: fit on the training images, choose on the validation images (as before; LoRA starts
  from this one, so that its validation images stay unseen).

Each labelled image enters the fit as ``train_views`` of its dihedral views (quarter turns and
mirror images: a crack or a scratch is a defect in any orientation); a fold keeps all views of an
image on one side and is scored on the images themselves. ``tta_views`` > 1 also averages the
features of that many views at test time, inside the exported encoder (``adapt.core.encoders``).
What each choice bought, on dev splits: experiments/fewshot/linear_recipe.md.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from dataclasses import dataclass, field

from adapt.core.classifier import ImageClassifier, LinearHead
from adapt.methods.base import AdaptContext, FitResult, Method
from adapt.methods.configs import LinearConfig
from adapt.methods.frozen import logistic_weights, selection_score, view_features

logger = logging.getLogger(__name__)


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, seed: int) -> LogisticRegression:
    with warnings.catch_warnings(), one_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(x, y)


def one_blas_thread():
    """The probe's matrices are small (hundreds of rows): BLAS threads only contend, and on a
    busy machine they made one fit 100x slower (measured: 28 s instead of 0.3 s)."""
    return threadpool_limits(limits=1, user_api="blas")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def head_inputs(feats: np.ndarray, tta_views: int) -> np.ndarray:
    """What the exported classifier's head sees for images with view features ``[N, V, D]``: the
    image itself, or the normalised mean of its first ``tta_views`` views."""
    return feats[:, 0] if tta_views == 1 else _unit(feats[:, :tta_views].mean(axis=1))


def fit_linear(ctx: AdaptContext, cfg: LinearConfig | None = None) -> FitResult:
    cfg = cfg or LinearConfig()
    if ctx.unlabeled is not None:
        from adapt.methods.linear_semisup import fit_linear_semisupervised

        return fit_linear_semisupervised(ctx, cfg)
    views = max(cfg.train_views, cfg.tta_views)
    train = view_features(ctx, ctx.split.train, "probe", views, cfg.pooling)
    val = view_features(ctx, ctx.split.val, "probe", views, cfg.pooling)
    y_train, y_val = np.asarray(ctx.split.train.labels), np.asarray(ctx.split.val.labels)
    if cfg.select == "cv":
        feats = np.concatenate([train, val]) if len(val) else train
        labels = np.concatenate([y_train, y_val])
        fitted = _cross_validated(ctx, feats, labels, cfg)
    else:
        fitted = _on_validation(ctx, train, y_train, val, y_val, cfg)
    c = fitted.c
    weight, bias = logistic_weights(fitted.model, len(ctx.classes))
    head = LinearHead(torch.from_numpy(weight), torch.from_numpy(bias))
    recipe = {"select": cfg.select, "train_views": cfg.train_views, "tta_views": cfg.tta_views, "pooling": cfg.pooling}
    info = ctx.info(Method.LINEAR, {"C": c, **recipe})
    clf = ImageClassifier(ctx.encoder("probe", views=cfg.tta_views, pooling=cfg.pooling), head, info).eval()
    params = {"C": c, "c_grid": cfg.c_grid, **recipe, **fitted.params}

    def predict(images) -> np.ndarray:  # the classifier's head on the cached view features: what its encoder computes
        feats = head_inputs(view_features(ctx, images, "probe", cfg.tta_views, cfg.pooling), cfg.tta_views)
        with torch.no_grad():
            return torch.softmax(clf.head(torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))), dim=-1).numpy()

    return FitResult(clf, params=params, val_probabilities=fitted.held_probs, val_labels=fitted.held_labels,
                     val_source=fitted.held_source, predict=predict)


@dataclass
class _Chosen:
    """A fitted probe, its C, what the choice measured, and held-out probabilities for the reject threshold."""

    model: LogisticRegression
    c: float
    params: dict = field(default_factory=dict)
    held_probs: np.ndarray | None = None
    held_labels: np.ndarray | None = None  # None: the probabilities are on the validation split
    held_source: str = ""


def _rows(feats: np.ndarray, views: int) -> np.ndarray:
    """Training rows ``[N * views, D]``: each image's first ``views`` views, image by image."""
    return feats[:, :views].reshape(-1, feats.shape[2])


def _on_validation(ctx: AdaptContext, train, y_train, val, y_val, cfg: LinearConfig):
    """C on the validation split (balanced accuracy, then lower log-loss), fitted on the training images."""
    x, y = _rows(train, cfg.train_views), np.repeat(y_train, cfg.train_views)
    val_x = head_inputs(val, cfg.tta_views) if len(val) else val
    best = None
    for step, c in enumerate(cfg.c_grid):
        model = _fit(x, y, c, cfg.max_iter, ctx.seed)
        score = selection_score(model.predict_proba(val_x), y_val) if len(val) else (0.0, 0.0)
        ctx.report({"val_balanced_accuracy": score[0], "val_log_loss": -score[1], "C": c}, step)
        if best is None or score > best[0]:
            best = (score, c, model)
    if not len(val):
        logger.warning("no validation images: using C=1.0")
        best = ((0.0, 0.0), 1.0, _fit(x, y, 1.0, cfg.max_iter, ctx.seed))
    _, c, model = best
    probs = model.predict_proba(val_x) if len(val) else None
    return _Chosen(model, c, held_probs=probs)


def _best_index(results: dict) -> int:
    """GridSearchCV's refit rule: highest mean balanced accuracy, ties to the higher neg. log-loss."""
    return int(np.lexsort((results["mean_test_neg_log_loss"], results["mean_test_balanced_accuracy"]))[-1])


def _cross_validated(ctx: AdaptContext, feats: np.ndarray, labels: np.ndarray, cfg: LinearConfig):
    """C by repeated stratified k-fold over all labelled images, then refit on all of them."""
    from sklearn.model_selection import GridSearchCV, RepeatedStratifiedKFold

    n, n_views, dim = feats.shape
    counts = np.bincount(labels, minlength=len(ctx.classes))
    k = int(min(cfg.cv_folds, counts[counts > 0].min()))
    x_train = _rows(feats, cfg.train_views)
    y_train = np.repeat(labels, cfg.train_views)
    if k < 2:
        logger.warning("linear: fewer than 2 labelled images in a class, no cross-validation: using C=1.0")
        return _Chosen(_fit(x_train, y_train, 1.0, cfg.max_iter, ctx.seed), 1.0)
    # one matrix: the training rows (image i's views at i*V .. i*V+V-1), then one scoring row per image
    x = np.concatenate([x_train, head_inputs(feats, cfg.tta_views)])
    y = np.concatenate([y_train, labels])
    v = cfg.train_views
    scoring_row = len(x_train) + np.arange(n)

    def rows(train_images: np.ndarray, held_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (train_images[:, None] * v + np.arange(v)).ravel(), scoring_row[held_images]

    image_folds = list(RepeatedStratifiedKFold(n_splits=k, n_repeats=cfg.cv_repeats, random_state=ctx.seed).split(np.zeros(n), labels))
    search = GridSearchCV(
        LogisticRegression(max_iter=cfg.max_iter, random_state=ctx.seed),
        {"C": list(cfg.c_grid)},
        scoring={"balanced_accuracy": "balanced_accuracy", "neg_log_loss": "neg_log_loss"},
        refit=False,
        cv=[rows(tr, te) for tr, te in image_folds],
        error_score="raise",
    )
    with warnings.catch_warnings(), one_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(x, y)
    res = search.cv_results_
    for step, c in enumerate(cfg.c_grid):
        ctx.report({"cv_balanced_accuracy": float(res["mean_test_balanced_accuracy"][step]),
                    "cv_log_loss": -float(res["mean_test_neg_log_loss"][step]), "C": c}, step)
    best = _best_index(res)
    c = float(cfg.c_grid[best])
    oof = np.zeros((n, len(ctx.classes)))
    for tr, te in image_folds[:k]:  # the first repeat holds every image out once
        fold_rows, held_rows = rows(tr, te)
        oof[te] = _fit(x[fold_rows], y[fold_rows], c, cfg.max_iter, ctx.seed).predict_proba(x[held_rows])
    model = _fit(x_train, y_train, c, cfg.max_iter, ctx.seed)
    cv = {"cv_balanced_accuracy": float(res["mean_test_balanced_accuracy"][best]),
          "cv_balanced_accuracy_std": float(res["std_test_balanced_accuracy"][best]), "cv_folds": len(image_folds)}
    (logger.info if ctx.progress else logger.debug)("linear: C=%g by %d-fold x %d cross-validation over %d labelled images (balanced accuracy %.1f%% +- %.1f)",
                c, k, cfg.cv_repeats, n, 100 * cv["cv_balanced_accuracy"], 100 * cv["cv_balanced_accuracy_std"])
    return _Chosen(model, c, cv, oof, labels, f"cross-validation ({n} labelled images)")
