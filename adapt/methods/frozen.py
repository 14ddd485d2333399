"""Shared pieces of the methods that work on frozen image features."""

from __future__ import annotations

import numpy as np
import torch

from adapt.core.features import cached_features, cached_view_features, labels_tensor
from adapt.data.images import ImageSet
from adapt.methods.base import AdaptContext
from adapt.methods.prompts import text_class_embeddings


def frozen_features(ctx: AdaptContext, use: str = "text") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train features, train labels, val features, val labels) as ``ctx.encoder(use)`` computes
    them, L2-normalised, cached on disk."""
    spec = ctx.backbone.encoder_spec(use)
    kw = dict(device=ctx.device, progress=ctx.progress, use_cache=ctx.use_feature_cache)
    train = cached_features(ctx.backbone, ctx.split.train, spec, **kw)
    val = cached_features(ctx.backbone, ctx.split.val, spec, **kw) if len(ctx.split.val) else torch.empty(0, train.shape[1])
    return train, labels_tensor(ctx.split.train), val, labels_tensor(ctx.split.val)


def view_features(ctx: AdaptContext, images: ImageSet, use: str, views: int, pooling: str = "avg") -> np.ndarray:
    """``[N, views, D]``: the features of the first ``views`` dihedral views of every image
    (``adapt.core.encoders.dihedral``; view 0 is the image itself), each cached on disk and in
    ``ctx.feature_memo``; the images not memoised are decoded once for all views."""
    spec = ctx.spec(use, pooling=pooling)
    if not len(images):
        return np.zeros((0, views, 0), np.float32)
    memo = ctx.feature_memo
    keys = [[(spec.key(), v, images.root, k) for k in images.keys] for v in range(views)]
    missing = [i for i in range(len(images)) if any(keys[v][i] not in memo for v in range(views))]
    if missing:
        computed = cached_view_features(ctx.backbone, images.subset(missing), spec, views=tuple(range(views)), device=ctx.device,
                                        progress=ctx.progress and len(missing) > 64, use_cache=ctx.use_feature_cache)
        for v, feats in enumerate(computed):
            memo.update(zip((keys[v][i] for i in missing), feats.numpy()))
    return np.stack([np.stack([memo[key] for key in keys[v]]) for v in range(views)], axis=1)


def class_embeddings(ctx: AdaptContext) -> torch.Tensor:
    b = ctx.backbone
    return text_class_embeddings(b.model, b.tokenizer, ctx.classes, ctx.descriptions, device=ctx.device)


def logit_scale(ctx: AdaptContext) -> float:
    return float(ctx.backbone.model.logit_scale.detach().exp().clamp(max=100.0))


def selection_score(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """How hyper-parameters are chosen on the validation split: balanced accuracy, then lower log-loss.

    Returned as a tuple that sorts higher-is-better.
    """
    if len(labels) == 0:
        return (0.0, 0.0)
    labels = np.asarray(labels)
    pred = probs.argmax(axis=1)
    recalls = [np.mean(pred[labels == c] == c) for c in np.unique(labels)]
    loss = -np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)))
    return (float(np.mean(recalls)), -float(loss))


def logistic_weights(model, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """sklearn stores one row for two classes; softmax over ``[0, z]`` equals its sigmoid."""
    coef, intercept = model.coef_.astype(np.float32), model.intercept_.astype(np.float32)
    if coef.shape[0] == 1 and num_classes == 2:
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    return coef, intercept
