"""Tip-Adapter (Zhang et al. 2022): a training-free key-value cache of the few-shot features.

``logits = gamma * s * f @ W_text.T + alpha * exp(-beta * (1 - f @ keys.T)) @ one_hot(labels)``.
``alpha``, ``beta`` and the zero-shot weight ``gamma`` (1 as in the paper, or 0: the cache alone,
for a text tower that does not know the classes' words) are searched on the few-shot validation
split. On CNN backbones the cache keys are the pooled mid-level features (``adapt.core.encoders``). With ``finetune`` (the
"-F" variant) the keys are then trained for a few epochs on the cached train features, the
best epoch is chosen on validation, and alpha/beta are searched again.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from adapt.core.classifier import ImageClassifier, TipAdapterHead
from adapt.methods.base import AdaptContext, FitResult, Method
from adapt.methods.configs import TipAdapterConfig
from adapt.methods.frozen import (
    class_embeddings,
    frozen_features,
    logit_scale,
    selection_score,
)


def _search(head: TipAdapterHead, cfg: TipAdapterConfig, val, y_val, ctx: AdaptContext) -> tuple[float, float, float]:
    """Grid search of (alpha, beta, text weight) on the validation features; the affinities are computed once."""
    y = y_val.numpy()
    with torch.no_grad():
        text_part, cache_part = head.split(val)
        zero_shot = (head.logit_scale * text_part @ head.text_weight.T).numpy()
        affinity = (cache_part @ head.keys.T).numpy()
    values = head.values.numpy()
    best = None
    for beta in cfg.beta_grid:
        cache = np.exp(-beta * (1.0 - affinity)) @ values
        for gamma in cfg.text_weight_grid:
            for alpha in cfg.alpha_grid:
                if gamma == 0 and alpha == 0:
                    continue  # no term left
                logits = gamma * zero_shot + alpha * cache
                logits -= logits.max(axis=1, keepdims=True)
                probs = np.exp(logits)
                probs /= probs.sum(axis=1, keepdims=True)
                score = selection_score(probs, y)
                if best is None or score > best[0]:
                    best = (score, alpha, beta, gamma)
    ctx.report({"val_balanced_accuracy": best[0][0], "alpha": best[1], "beta": best[2], "text_weight": best[3]}, 0)
    return float(best[1]), float(best[2]), float(best[3])


def fit_tip_adapter(ctx: AdaptContext, cfg: TipAdapterConfig | None = None) -> FitResult:
    cfg = cfg or TipAdapterConfig()
    train, y_train, val, y_val = frozen_features(ctx, "cache")
    values = F.one_hot(y_train, num_classes=len(ctx.classes)).float()
    encoder = ctx.encoder("cache")
    text_dim = encoder.layout(ctx.backbone.image_size).sizes.get("embedding", 0) if len(encoder.spec.parts) > 1 else 0
    head = TipAdapterHead(class_embeddings(ctx), train, values, 1.0, 1.0, logit_scale(ctx), text_dim=text_dim)
    _, keys = head.split(train)
    with torch.no_grad():
        head.keys.data = keys.clone()
    has_val = len(y_val) > 0
    alpha, beta, gamma = _search(head, cfg, val, y_val, ctx) if has_val else (1.0, 1.0, 1.0)
    head.alpha, head.beta, head.text_weight_scale = alpha, beta, gamma
    params = {"alpha": alpha, "beta": beta, "text_weight": gamma, "finetune": cfg.finetune}
    history = []
    if cfg.finetune:
        from adapt.methods.base import TrainConfig
        result = ctx.train_net(
            head,
            (train, y_train),
            (val, y_val),
            TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=256, patience=cfg.epochs),
        )
        with torch.no_grad():
            head.keys.copy_(F.normalize(head.keys, dim=-1))
        if has_val:
            head.alpha, head.beta, head.text_weight_scale = _search(head, cfg, val, y_val, ctx)
        params.update(alpha=head.alpha, beta=head.beta, text_weight=head.text_weight_scale, best_epoch=result.best_epoch, epochs=cfg.epochs, lr=cfg.lr)
        history = result.history
    head.keys.requires_grad_(False)
    with torch.no_grad():
        val_probs = torch.softmax(head(val), dim=-1).numpy() if has_val else None
    info = ctx.info(Method.TIP_ADAPTER, params)
    clf = ImageClassifier(encoder, head, info).eval()
    return FitResult(clf, params=params, val_probabilities=val_probs, history=history)
