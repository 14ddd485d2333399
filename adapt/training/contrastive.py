"""Lightning module for contrastive pretraining of an open_clip model (CLIP or SigLIP loss).

The losses are open_clip's own (``ClipLoss``, ``SigLipLoss``); under DDP, ClipLoss gathers
features across ranks with gradients and computes the local loss, as open_clip's trainer does,
so the batch seen by the loss grows with the number of devices. AdamW without weight decay on
gains, biases, norms and temperature (``adapt.training.optim``'s rule and warmup+cosine schedule);
the temperature is clamped to 100 after each step.

With ``ssl_weight > 0`` a SLIP-style self-supervised term is added: two augmented views of
image-only (e.g. unlabeled in-domain) images, InfoNCE between them through a small projection
head that is not part of the saved model. Batches are then ``{"clip": ..., "ssl": ...}``.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from open_clip.loss import ClipLoss, SigLipLoss

from adapt.core.classifier import PixelNormalizer
from adapt.core.encoders import freeze_norm_stats
from adapt.training.optim import decay_groups, step_schedule, warmup_cosine

# The image tower's output head (final norm + projection to the joint space): always trained at
# the full learning rate, so even a locked trunk can meet the text tower.
IMAGE_HEAD = {"proj", "ln_post.weight", "ln_post.bias", "head.proj.weight", "head.proj.bias"}  # ViT, timm CNN


class ContrastivePretraining(L.LightningModule):
    def __init__(
        self,
        model: torch.nn.Module,
        *,
        loss: str = "clip",
        mean=(0.48145466, 0.4578275, 0.40821073),
        std=(0.26862954, 0.26130258, 0.27577711),
        lr: float = 5e-4,
        weight_decay: float = 0.1,
        warmup_steps: int = 100,
        total_steps: int = 1000,
        ssl_weight: float = 0.0,
        ssl_temperature: float = 0.1,
        vision_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if loss not in ("clip", "siglip"):
            raise ValueError(f"loss must be clip or siglip, got {loss}")
        if loss == "siglip" and getattr(model, "logit_bias", None) is None:
            raise ValueError("the SigLIP loss needs a model with a logit_bias (create it with init_logit_bias)")
        self.model, self.loss_name = model, loss
        self.normalize = PixelNormalizer(mean, std)
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, max(total_steps, 1)
        self.loss_fn = None
        self.ssl_weight, self.ssl_temperature = ssl_weight, ssl_temperature
        self.vision_lr_scale = vision_lr_scale  # < 1 keeps the image tower near its initialisation
        if vision_lr_scale == 0:  # locked image trunk (LiT-like): only the output head of the image tower trains
            for name, p in model.visual.named_parameters():
                p.requires_grad_(name in IMAGE_HEAD)
        if ssl_weight > 0:
            dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None else model.visual.output_dim
            self.ssl_head = torch.nn.Sequential(
                torch.nn.Linear(dim, 512), torch.nn.BatchNorm1d(512), torch.nn.ReLU(inplace=True), torch.nn.Linear(512, 128)
            )

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "vision_lr_scale", 1.0) == 0:  # a locked CNN trunk keeps its batch-norm statistics too
            freeze_norm_stats(self.model.visual)
        return self

    def setup(self, stage: str) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank, world = self.global_rank, (torch.distributed.get_world_size() if distributed else 1)  # 0, 1 outside a Trainer
        if self.loss_name == "clip":
            self.loss_fn = ClipLoss(local_loss=world > 1, gather_with_grad=world > 1, cache_labels=True, rank=rank, world_size=world)
        else:
            self.loss_fn = SigLipLoss(rank=rank, world_size=world)

    def training_step(self, batch, _):
        if isinstance(batch, dict):
            loss = self._clip_step(*batch["clip"])
            if self.ssl_weight > 0 and batch.get("ssl") is not None:
                ssl = self._ssl_step(*batch["ssl"])
                self.log("ssl_loss", ssl, on_step=True, on_epoch=True, batch_size=len(batch["ssl"][0]))
                loss = loss + self.ssl_weight * ssl
            self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["clip"][1]))
            return loss
        loss = self._clip_step(*batch)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch[1]))
        return loss

    def _ssl_step(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        feats = self.model.encode_image(self.normalize(torch.cat([view1, view2])))
        z = torch.nn.functional.normalize(self.ssl_head(feats.float()), dim=-1)
        n = len(view1)
        sim = z @ z.T / self.ssl_temperature
        sim.fill_diagonal_(float("-inf"))
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
        return torch.nn.functional.cross_entropy(sim, targets)

    def _clip_step(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        out = self.model(self.normalize(pixels), tokens)
        if isinstance(out, dict):
            img, txt, scale, bias = out["image_features"], out["text_features"], out["logit_scale"], out.get("logit_bias")
        else:
            img, txt, scale, *rest = out
            bias = rest[0] if rest else None
        loss = self.loss_fn(img, txt, scale, bias) if self.loss_name == "siglip" else self.loss_fn(img, txt, scale)
        self.log("clip_loss", loss, on_step=True, on_epoch=True, batch_size=len(tokens))
        self.log("logit_scale", scale.detach(), on_step=True, on_epoch=False, batch_size=len(tokens))
        return loss

    def on_train_batch_end(self, *_):
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))

    def configure_optimizers(self):
        def in_trunk(name: str) -> bool:
            return name.startswith("model.visual.") and name[len("model.visual.") :] not in IMAGE_HEAD

        named = list(self.named_parameters())
        groups = decay_groups([(n, p) for n, p in named if not in_trunk(n)], self.weight_decay, lr=self.lr)
        groups += decay_groups([(n, p) for n, p in named if in_trunk(n)], self.weight_decay, lr=self.lr * self.vision_lr_scale)
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, 0.98), eps=1e-6)
        return {"optimizer": opt, "lr_scheduler": step_schedule(warmup_cosine(opt, self.warmup_steps, self.total_steps))}
