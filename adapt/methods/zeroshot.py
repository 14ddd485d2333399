"""Zero-shot: class embeddings from prompt templates x class names (or descriptions); no training."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from adapt.classifier import CosineHead, ImageClassifier
from adapt.methods.base import AdaptContext, FitResult, Method
from adapt.methods.frozen import class_embeddings, frozen_features, logit_scale


@dataclass
class ZeroShotConfig:
    """Zero-shot has no hyper-parameters besides the prompts (class descriptions come from the data or the CLI)."""


def fit_zeroshot(ctx: AdaptContext, cfg: ZeroShotConfig | None = None) -> FitResult:
    weights = class_embeddings(ctx)
    head = CosineHead(weights, logit_scale(ctx))
    _, _, val, _ = frozen_features(ctx)
    with torch.no_grad():
        val_probs = torch.softmax(head(val), dim=-1).numpy() if len(val) else None
    info = ctx.info(Method.ZEROSHOT, {"descriptions": dict(ctx.descriptions)})
    clf = ImageClassifier(copy.deepcopy(ctx.backbone.model.visual), head, info).eval()
    return FitResult(clf, params={"logit_scale": head.logit_scale}, val_probabilities=val_probs)
