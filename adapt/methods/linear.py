"""Linear probe: logistic regression on cached, frozen, L2-normalised image features.

The inverse regularisation strength ``C`` is chosen on the few-shot validation split
(balanced accuracy, ties to the lower validation log-loss).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from adapt.core.classifier import ImageClassifier, LinearHead
from adapt.methods.base import AdaptContext, FitResult, Method
from adapt.methods.configs import LinearConfig
from adapt.methods.frozen import frozen_features, logistic_weights, selection_score

logger = logging.getLogger(__name__)


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, seed: int) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(x, y)


def fit_linear(ctx: AdaptContext, cfg: LinearConfig | None = None) -> FitResult:
    cfg = cfg or LinearConfig()
    if ctx.unlabeled is not None:
        from adapt.methods.linear_semisup import fit_linear_semisupervised

        return fit_linear_semisupervised(ctx, cfg)
    train, y_train, val, y_val = (t.numpy() for t in frozen_features(ctx, "probe"))
    num_classes = len(ctx.classes)
    best = None
    for step, c in enumerate(cfg.c_grid):
        model = _fit(train, y_train, c, cfg.max_iter, ctx.seed)
        score = selection_score(model.predict_proba(val), y_val) if len(val) else (0.0, 0.0)
        ctx.report({"val_balanced_accuracy": score[0], "val_log_loss": -score[1], "C": c}, step)
        if best is None or score > best[0]:
            best = (score, c, model)
    if not len(val):
        logger.warning("no validation images: using C=1.0")
        best = ((0.0, 0.0), 1.0, _fit(train, y_train, 1.0, cfg.max_iter, ctx.seed))
    _, c, model = best
    weight, bias = logistic_weights(model, num_classes)
    head = LinearHead(torch.from_numpy(weight), torch.from_numpy(bias))
    info = ctx.info(Method.LINEAR, {"C": c})
    clf = ImageClassifier(ctx.encoder("probe"), head, info).eval()
    val_probs = model.predict_proba(val) if len(val) else None
    return FitResult(clf, params={"C": c, "c_grid": cfg.c_grid}, val_probabilities=val_probs)
