"""Resumable pretraining runs, the one sequence both pretraining objectives share (contrastive:
``adapt.training.contrastive``; self-supervised: ``adapt.training.ssl``): a Lightning Trainer placed
by ``Devices`` (DDP etc.), a resumable ``last.ckpt`` every N steps, ``--resume`` from it, a
wall-clock cap that still leaves a checkpoint, and the run's steps, time and final loss."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from adapt.errors import AdaptError
from adapt.training.devices import Devices

logger = logging.getLogger(__name__)


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
    module: L.LightningModule,
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
