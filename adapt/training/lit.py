"""LiT (Zhai et al. 2022): train a text tower against a locked image tower, on cached image features.

With the image trunk locked its output for an image never changes, so it is computed once
(``adapt.default_backbone``) and the loop only runs the text tower, the image tower's output
projection (``visual.head``) and the temperature. The loss is open_clip's ``ClipLoss`` or
``SigLipLoss``, as in full pretraining.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from adapt.encoders import freeze_norm_stats


class LockedImageTextTraining(L.LightningModule):
    """Batches are ``(trunk_features [N, C], tokens [N, T])``; ``model`` is an open_clip CLIP
    whose ``visual`` has a ``head`` (open_clip's ``TimmModel``)."""

    def __init__(self, model, *, loss: str = "clip", lr: float = 1e-3, weight_decay: float = 0.1,
                 warmup_steps: int = 50, total_steps: int = 1000) -> None:
        super().__init__()
        if loss not in ("clip", "siglip"):
            raise ValueError(f"loss must be clip or siglip, got {loss}")
        if loss == "siglip" and getattr(model, "logit_bias", None) is None:
            raise ValueError("the SigLIP loss needs a model with a logit_bias")
        self.model, self.loss_name = model, loss
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, max(total_steps, 1)
        for p in model.visual.trunk.parameters():
            p.requires_grad_(False)
        self.loss_fn = None

    def train(self, mode: bool = True):
        return freeze_norm_stats(super().train(mode))  # the trunk is not even run here, but stays as it was

    def setup(self, stage: str) -> None:
        trainer = self._trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if self.loss_name == "clip":
            self.loss_fn = ClipLoss(local_loss=world > 1, gather_with_grad=world > 1, cache_labels=True, rank=rank, world_size=world)
        else:
            self.loss_fn = SigLipLoss(rank=rank, world_size=world)

    def training_step(self, batch, _):
        feats, tokens = batch
        image = F.normalize(self.model.visual.head(feats), dim=-1)
        text = self.model.encode_text(tokens, normalize=True)
        scale = self.model.logit_scale.exp()
        if self.loss_name == "siglip":
            loss = self.loss_fn(image, text, scale, self.model.logit_bias)
        else:
            loss = self.loss_fn(image, text, scale)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(tokens))
        self.log("logit_scale", scale.detach(), on_step=True, on_epoch=False, batch_size=len(tokens))
        return loss

    def on_train_batch_end(self, *_):
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "ln" in name or "bias" in name or "logit_" in name else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr, betas=(0.9, 0.98), eps=1e-6,
        )
        warmup = min(self.warmup_steps, self.total_steps - 1)
        sched = torch.optim.lr_scheduler.SequentialLR(
            opt,
            [
                torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / max(1, warmup), total_iters=max(1, warmup)),
                torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.total_steps - warmup)),
            ],
            milestones=[max(1, warmup)],
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
