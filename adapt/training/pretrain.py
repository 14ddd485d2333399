"""Lightning module for contrastive pretraining of an open_clip model (CLIP or SigLIP loss).

The losses are open_clip's own (``ClipLoss``, ``SigLipLoss``); under DDP, ClipLoss gathers
features across ranks with gradients and computes the local loss, as open_clip's trainer does,
so the batch seen by the loss grows with the number of devices. AdamW without weight decay on
gains, biases, embeddings and temperature; linear warmup then cosine decay; the temperature
is clamped to 100 after each step.

With ``ssl_weight > 0`` a SLIP-style self-supervised term is added: two augmented views of
image-only (e.g. unlabeled in-domain) images, InfoNCE between them through a small projection
head that is not part of the saved model. Batches are then ``{"clip": ..., "ssl": ...}``.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from open_clip.loss import ClipLoss, SigLipLoss

from adapt.core.classifier import PixelNormalizer
from adapt.core.encoders import freeze_norm_stats
from adapt.errors import AdaptError
from adapt.training.devices import Devices

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
        trainer = self._trainer  # None when used outside a Trainer (e.g. to measure a loss)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
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
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
            trunk = name.startswith("model.visual.") and name[len("model.visual.") :] not in IMAGE_HEAD
            groups.setdefault((trunk, exclude), []).append(p)
        opt = torch.optim.AdamW(
            [
                {
                    "params": params,
                    "weight_decay": 0.0 if exclude else self.weight_decay,
                    "lr": self.lr * (self.vision_lr_scale if trunk else 1.0),
                }
                for (trunk, exclude), params in groups.items()
            ],
            lr=self.lr,
            betas=(0.9, 0.98),
            eps=1e-6,
        )
        warmup, total = self.warmup_steps, self.total_steps

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, schedule), "interval": "step"}}


def resume_checkpoint(ckpt_dir: Path, resume: bool) -> str | None:
    """``ckpt_dir/last.ckpt`` to continue from with ``resume``; a user error when it is missing, or
    when checkpoints are there and ``resume`` is off (a new run must not overwrite an old one)."""
    last = ckpt_dir / "last.ckpt"
    if resume:
        if not last.is_file():
            raise AdaptError(f"--resume: no checkpoint at {last}")
        return str(last)
    if any(ckpt_dir.glob("*.ckpt")):
        raise AdaptError(f"{ckpt_dir} already has checkpoints: pass --resume to continue that run, or another --output-dir")
    return None


def fit_pretraining(
    module: ContrastivePretraining,
    train_data,
    devices: Devices,
    *,
    ckpt_dir: Path,
    resume_from: str | None = None,
    epochs: int = 1,
    max_steps: int = -1,
    max_minutes: float | None = None,
    checkpoint_every: int = 100,
    loggers: list | None = None,
    callbacks: list | None = None,
    progress: bool = True,
    log_every_n_steps: int = 10,
) -> L.Trainer:
    """Run ``module`` on ``train_data`` with a Lightning Trainer placed by ``devices`` (DDP etc.),
    writing a resumable ``last.ckpt`` into ``ckpt_dir`` every ``checkpoint_every`` steps; returns the trainer."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=checkpoint_every, save_last=True, save_top_k=0)
    trainer = L.Trainer(
        **devices.trainer_kwargs(),
        max_epochs=epochs,
        max_steps=max_steps,
        max_time={"minutes": max_minutes} if max_minutes else None,
        gradient_clip_val=1.0,
        logger=loggers or False,
        callbacks=[checkpoint, *(callbacks or [])],
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=log_every_n_steps,
        use_distributed_sampler=True,
    )
    trainer.fit(module, train_data, ckpt_path=resume_from)
    return trainer
