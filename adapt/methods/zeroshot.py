"""Zero-shot: class embeddings from prompt templates x class names (or descriptions); no training."""

from __future__ import annotations

import torch

from adapt.core.classifier import CosineHead, ImageClassifier
from adapt.core.features import cached_features
from adapt.methods.base import AdaptContext, FitResult, Method
from adapt.methods.configs import ZeroShotConfig
from adapt.methods.frozen import class_embeddings, logit_scale


def fit_zeroshot(ctx: AdaptContext, cfg: ZeroShotConfig | None = None) -> FitResult:
    weights = class_embeddings(ctx)
    head = CosineHead(weights, logit_scale(ctx))
    val_probs = None
    if len(ctx.split.val):  # only for choosing the reject threshold
        val = cached_features(ctx.backbone, ctx.split.val, ctx.backbone.encoder_spec("text"), device=ctx.device,
                              progress=ctx.progress, use_cache=ctx.use_feature_cache)
        with torch.no_grad():
            val_probs = torch.softmax(head(val), dim=-1).numpy()
    info = ctx.info(Method.ZEROSHOT, {"descriptions": dict(ctx.descriptions)})
    clf = ImageClassifier(ctx.encoder("text"), head, info).eval()
    return FitResult(clf, params={"logit_scale": head.logit_scale}, val_probabilities=val_probs)
