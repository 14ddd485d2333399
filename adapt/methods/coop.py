"""CoOp (Zhou et al. 2022): learn the prompt's context vectors; everything else stays frozen.

Each class prompt is ``[SOS] v_1 ... v_M <class words> . [EOS]`` where the ``v_i`` are shared
learned token embeddings (class token at the end). Image features are frozen and cached, so
an epoch costs one text-tower pass per class. The learned prompts are turned into fixed class
embeddings at the end, so the exported classifier is a plain cosine head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import TextTransformer
from torch import nn

from adapt.core.classifier import CosineHead, ImageClassifier
from adapt.errors import AdaptError
from adapt.methods.base import AdaptContext, FitResult, Method, TrainConfig
from adapt.methods.configs import CoOpConfig
from adapt.methods.frozen import frozen_features, logit_scale
from adapt.methods.prompts import class_text


def pool_text(x: torch.Tensor, tokens: torch.Tensor, pool_type: str, eos_id: int | None) -> torch.Tensor:
    """One vector per prompt from the text tower's token outputs ``[N, T, D]``, as the tower's
    ``pool_type`` says (open_clip's rules): the first or last token, the end-of-text token (the
    largest id, ``argmax``, or the tokenizer's ``eos`` id), or no pooling."""
    rows = torch.arange(x.shape[0], device=x.device)
    if pool_type == "first":
        return x[:, 0]
    if pool_type == "last":
        return x[:, -1]
    if pool_type == "argmax":
        return x[rows, tokens.argmax(dim=-1)]
    if pool_type == "eos":
        return x[rows, (tokens == eos_id).int().argmax(dim=-1)]
    return x


class TextTower(nn.Module):
    """An open_clip text tower run from token *embeddings* (so some of them can be learned)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        text = getattr(model, "text", None)
        src = text if isinstance(text, TextTransformer) else model
        if isinstance(text, nn.Module) and not isinstance(text, TextTransformer):
            raise AdaptError("CoOp needs an open_clip transformer text tower (this model's text tower is external)")
        if getattr(src, "cls_emb", None) is not None:
            raise AdaptError("CoOp does not support text towers with a class embedding (CoCa-style)")
        self.token_embedding = src.token_embedding
        self.positional_embedding = src.positional_embedding
        self.transformer = src.transformer
        self.ln_final = src.ln_final
        self.text_projection = src.text_projection
        self.register_buffer("attn_mask", src.attn_mask, persistent=False)
        self.pool_type = getattr(src, "text_pool_type", getattr(src, "pool_type", "argmax"))
        self.eos_id = getattr(src, "text_eos_id", getattr(src, "eos_id", None))

    def forward(self, embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = embeds + self.positional_embedding[: embeds.shape[1]]
        mask = self.attn_mask[: embeds.shape[1], : embeds.shape[1]] if self.attn_mask is not None else None
        x = self.ln_final(self.transformer(x, attn_mask=mask))
        x = pool_text(x, tokens, self.pool_type, self.eos_id)
        if self.text_projection is not None:
            x = self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection
        return F.normalize(x, dim=-1)


class PromptLearner(nn.Module):
    """Learned context + frozen text tower -> class embeddings -> cosine logits over image features."""

    def __init__(self, model, tokenizer, classes, descriptions, cfg: CoOpConfig, scale: float) -> None:
        super().__init__()
        self.text = TextTower(model)
        for p in self.text.parameters():
            p.requires_grad_(False)
        placeholder = " ".join(["X"] * cfg.n_ctx)
        tokens = tokenizer([f"{placeholder} {class_text(c, descriptions)}." for c in classes])
        self.register_buffer("tokens", tokens, persistent=False)
        with torch.no_grad():
            embeds = self.text.token_embedding(tokens)
        self.register_buffer("prefix", embeds[:, :1].clone(), persistent=False)  # SOS
        self.register_buffer("suffix", embeds[:, 1 + cfg.n_ctx :].clone(), persistent=False)  # class words, EOS, pad
        self.ctx = nn.Parameter(self._init_ctx(tokenizer, cfg, embeds.shape[-1]))
        self.scale = scale

    def _init_ctx(self, tokenizer, cfg: CoOpConfig, width: int) -> torch.Tensor:
        words = cfg.init.split()
        if len(words) == cfg.n_ctx:
            with torch.no_grad():
                return self.text.token_embedding(tokenizer([cfg.init]))[0, 1 : 1 + cfg.n_ctx].clone()
        return torch.randn(cfg.n_ctx, width) * 0.02

    def class_embeddings(self) -> torch.Tensor:
        n = self.tokens.shape[0]
        embeds = torch.cat([self.prefix, self.ctx.unsqueeze(0).expand(n, -1, -1), self.suffix], dim=1)
        return self.text(embeds, self.tokens)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * features @ self.class_embeddings().T


def _train(learner, train, y_train, val, y_val, cfg: CoOpConfig, ctx: AdaptContext):
    return ctx.train_net(
        learner,
        (train, y_train),
        (val, y_val),
        TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, patience=cfg.patience),
    )


def fit_coop(ctx: AdaptContext, cfg: CoOpConfig | None = None) -> FitResult:
    cfg = cfg or CoOpConfig()
    train, y_train, val, y_val = frozen_features(ctx)
    b = ctx.backbone
    flags = {name: p.requires_grad for name, p in b.model.named_parameters()}
    learner = PromptLearner(b.model, b.tokenizer, ctx.classes, ctx.descriptions, cfg, logit_scale(ctx))
    try:
        result = _train(learner, train, y_train, val, y_val, cfg, ctx)
    finally:  # the text tower is the shared backbone's: leave it as it was
        for name, p in b.model.named_parameters():
            p.requires_grad_(flags[name])
    learner.eval()
    with torch.no_grad():
        weights = learner.class_embeddings()
        val_probs = torch.softmax(learner(val), dim=-1).numpy() if len(y_val) else None
    head = CosineHead(weights, learner.scale)
    params = {**cfg.__dict__, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
    clf = ImageClassifier(ctx.encoder("text"), head, ctx.info(Method.COOP, params)).eval()
    return FitResult(clf, params=params, val_probabilities=val_probs, history=result.history)
