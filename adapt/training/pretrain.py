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

import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from open_clip.loss import ClipLoss, SigLipLoss

from adapt.core.classifier import PixelNormalizer
from adapt.core.encoders import freeze_norm_stats
from adapt.errors import AdaptError
from adapt.training.devices import Devices
from adapt.training.optim import decay_groups, step_schedule, warmup_cosine

logger = logging.getLogger(__name__)

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


def combined_loader(loaders: dict):
    """One batch of each loader per step (``{"clip": ..., "ssl": ...}``), cycling the shorter ones."""
    from lightning.pytorch.utilities import CombinedLoader

    return CombinedLoader(loaders, mode="max_size_cycle")


@dataclass
class PretrainingRun:
    """What a pretraining run did: steps (counted from 0 across resumes), where it resumed, time, loss."""

    steps: int
    start_step: int
    seconds: float
    final_loss: float
    is_main: bool  # rank 0: the process that writes the result


def run_pretraining(
    module: L.LightningModule,
    train_data,
    devices: Devices,
    *,
    ckpt_dir: Path,
    resume: bool,
    total_steps: int,
    epochs: int,
    max_steps: int = -1,
    max_minutes: float | None = None,
    checkpoint_every: int = 100,
    loggers: list | None = None,
    callbacks: list | None = None,
    progress: bool = True,
    loss_name: str = "train_loss",
    log_every_n_steps: int = 10,
) -> PretrainingRun:
    """The one pretraining sequence of both objectives (contrastive, self-supervised): resume from
    ``ckpt_dir/last.ckpt`` when asked, fit with resumable checkpoints, keep a checkpoint of where a
    ``max_minutes`` cap stopped it, and report the steps, time and final ``loss_name``."""
    ckpt_path = resume_checkpoint(ckpt_dir, resume)
    if ckpt_path:
        logger.info("resuming from %s", ckpt_path)
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # frozen batch-norm layers (locked trunks) are in eval mode on purpose
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        trainer = fit_pretraining(
            module, train_data, devices, ckpt_dir=ckpt_dir, resume_from=ckpt_path, epochs=epochs, max_steps=max_steps,
            max_minutes=max_minutes, checkpoint_every=checkpoint_every, loggers=loggers, callbacks=callbacks,
            progress=progress, log_every_n_steps=log_every_n_steps,
        )
    seconds = time.perf_counter() - t0
    steps = trainer.global_step
    start_step = int(torch.load(ckpt_path, map_location="cpu", weights_only=False).get("global_step", 0)) if ckpt_path else 0
    if max_minutes and steps < total_steps:  # stopped by the time cap: keep a resumable checkpoint of where it got
        logger.warning("stopped by --max-minutes after %d of %d steps", steps, total_steps)
        trainer.save_checkpoint(ckpt_dir / "last.ckpt")
    metrics = trainer.callback_metrics
    final_loss = float(metrics.get(f"{loss_name}_epoch", metrics.get(loss_name, float("nan"))))
    return PretrainingRun(steps, start_step, seconds, final_loss, trainer.global_rank == 0)
