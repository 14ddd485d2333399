"""Linear probe with unlabeled images (``adapt retrain --method linear --unlabeled ...``).

The frozen features of the unlabeled images (cached like the labelled ones) may centre the
feature space (on their mean or on k-means centroids) and receive labels by label spreading;
``adapt.methods.semisup.fit_semisupervised`` chooses which, and C, on the few-shot validation split. The
result is one ``CenteredLinearHead`` (or a plain ``LinearHead`` when validation prefers no
centering) on the same encoder, so export and serving are unchanged.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from adapt.core.classifier import CenteredLinearHead, ImageClassifier, LinearHead
from adapt.core.features import cached_features
from adapt.methods.base import AdaptContext, FitResult, Method
from adapt.methods.configs import LinearConfig
from adapt.methods.frozen import frozen_features, logistic_weights
from adapt.methods.semisup import fit_semisupervised

logger = logging.getLogger(__name__)


def fit_linear_semisupervised(ctx: AdaptContext, cfg: LinearConfig) -> FitResult:
    train, y_train, val, y_val = (t.numpy() for t in frozen_features(ctx, "probe"))
    spec = ctx.backbone.encoder_spec("probe")
    unlabeled = cached_features(ctx.backbone, ctx.unlabeled, spec, device=ctx.device, progress=ctx.progress,
                                use_cache=ctx.use_feature_cache).numpy()
    logger.info("semi-supervised linear probe: %d labelled + %d unlabeled images", len(train), len(unlabeled))

    def report(params: dict, score: tuple[float, float], step: int) -> None:
        ctx.report({"val_balanced_accuracy": score[0], "val_log_loss": -score[1], **params}, step)

    fitted = fit_semisupervised(train, y_train, val, y_val, unlabeled, c_grid=cfg.c_grid, seed=ctx.seed,
                                max_iter=cfg.max_iter, report=report)
    weight, bias = (torch.from_numpy(a) for a in logistic_weights(fitted.model, len(ctx.classes)))
    if fitted.centroids is None:
        head = LinearHead(weight, bias)
    else:
        head = CenteredLinearHead(torch.from_numpy(fitted.centroids.astype(np.float32)), weight, bias)
    params = {**fitted.params, "c_grid": cfg.c_grid, "unlabeled_used": len(unlabeled)}
    info = ctx.info(Method.LINEAR, {**fitted.params, "unlabeled_images": len(unlabeled)})
    clf = ImageClassifier(ctx.encoder("probe"), head, info).eval()
    return FitResult(clf, params=params, val_probabilities=fitted.val_probabilities)
