"""LiT (Zhai et al. 2022): train a text tower against a locked image tower, on cached image features.

With the image trunk locked its output for an image never changes, so it is computed once
(``adapt.pipelines.default_backbone``) and the loop only runs the text tower, the image tower's output
projection (``visual.head``) and the temperature. The loss is open_clip's ``ClipLoss`` or
``SigLipLoss``, as in full pretraining.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adapt.training.pretrain import ContrastivePretraining


class LockedImageTextTraining(ContrastivePretraining):
    """Batches are ``(trunk_features [N, C], tokens [N, T])``; ``model`` is an open_clip CLIP
    whose ``visual`` has a ``head`` (open_clip's ``TimmModel``). The loss set-up, temperature
    clamp and frozen trunk (batch-norm statistics included) are ``ContrastivePretraining``'s with
    ``vision_lr_scale=0``."""

    def __init__(self, model, *, loss: str = "clip", lr: float = 1e-3, weight_decay: float = 0.1,
                 warmup_steps: int = 50, total_steps: int = 1000) -> None:
        super().__init__(model, loss=loss, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                         total_steps=total_steps, vision_lr_scale=0.0)

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
