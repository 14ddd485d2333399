"""LiT (Zhai et al. 2022): train a text tower against a locked image tower, on cached image features.

With the image trunk locked its output for an image never changes, so it is computed once
(``adapt.pipelines.lit_build``) and the loop (``fit_locked_image``) only runs the text tower, the image tower's output
projection (``visual.head``) and the temperature. The loss is open_clip's ``ClipLoss`` or
``SigLipLoss``, as in full pretraining.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adapt.training.optim import decay_groups, step_schedule, warmup_cosine
from adapt.training.contrastive import ContrastivePretraining


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
        opt = torch.optim.AdamW(decay_groups(self.model.named_parameters(), self.weight_decay), lr=self.lr, betas=(0.9, 0.98), eps=1e-6)
        return {"optimizer": opt, "lr_scheduler": step_schedule(warmup_cosine(opt, self.warmup_steps, self.total_steps))}


def fit_locked_image(module: LockedImageTextTraining, loader, *, epochs: int, steps: int, progress: bool = True) -> None:
    """Train ``module`` in place on one CPU for ``steps`` steps (at most ``epochs`` epochs); no logger, no checkpoints."""
    import lightning as L

    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, max_steps=steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False, gradient_clip_val=1.0,
    )
    trainer.fit(module, loader)
