"""``adapt pretrain --objective ssl``: continue training the image tower on a line's unlabeled images.

``run_ssl_pretrain`` loads a backbone (``--from default`` or a checkpoint), trains the upper
trunk blocks of its image tower self-supervised (``adapt.training.ssl``, lightly loss and head)
on two views of each unlabeled image, and writes an open_clip-loadable backbone: the same
architecture and config, the new image tower, the text tower unchanged. Resumable from
``OUTPUT_DIR/checkpoints/last.ckpt``; any Lightning accelerator / devices.

Views (lightly ``SimCLRTransform``): crops keeping >= ``min_scale`` of the cell, flips, quarter
turns; no colour jitter, grey-scale or blur: EL images are grey and defects are dark local
detail that those would teach the features to ignore.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from torch.utils.data import Dataset

from adapt.errors import AdaptError

logger = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"


@dataclass
class SslPretrainConfig:
    data: str = "elpv"  # unlabeled images: folder, CSV with a path column, or elpv (train pool only)
    init: str = "default"  # backbone to start from: default or a checkpoint file / folder
    model: str = "adapt-effnet-lite0"  # architecture (when init is a bare file)
    output_dir: Path | None = None
    loss: str = "simclr"  # simclr | vicreg (lightly losses)
    epochs: int = 3
    max_steps: int = -1  # stop after this many optimiser steps (-1: all epochs)
    batch_size: int = 32  # images per device per step (two views each)
    image_size: int = 160  # resolution of the training views (the saved tower keeps its own)
    min_scale: float = 0.6  # smallest crop, as a fraction of the image area
    trainable_from: int = 4  # first trainable trunk block (EfficientNet-Lite0 has 7: 0..6)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    temperature: float = 0.2  # SimCLR temperature
    warmup_steps: int = 10
    seed: int = 0
    num_workers: int = 1
    accelerator: str = "auto"
    devices: str = "1"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    checkpoint_every: int = 20  # optimiser steps between resumable checkpoints
    resume: bool = False
    max_minutes: float | None = 30.0  # wall-clock cap (the 2-core budget); the backbone is still written
    progress: bool = True

    def __post_init__(self) -> None:
        from adapt.training.ssl import LOSSES

        if self.loss not in LOSSES:
            raise ValueError(f"ssl loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.batch_size < 2:
            raise ValueError("self-supervised training needs batch_size >= 2")
        if not 0.05 <= self.min_scale <= 1.0:
            raise ValueError("min_scale must be in [0.05, 1]")
        if self.epochs < 1 or self.image_size < 32:
            raise ValueError("epochs must be >= 1 and image_size >= 32")
        if self.output_dir is None:
            self.output_dir = Path("runs") / "pretrain" / f"ssl-{self.loss}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.output_dir = Path(self.output_dir)


class TwoViewDataset(Dataset):
    """Unlabeled ``ImageSet`` -> two augmented, normalised views ``[3, S, S]`` per image."""

    def __init__(self, images, image_size: int, mean, std, min_scale: float) -> None:
        from lightly.transforms import SimCLRTransform

        self.images = images
        self.transform = SimCLRTransform(
            input_size=image_size, cj_prob=0.0, random_gray_scale=0.0, gaussian_blur=0.0, min_scale=min_scale,
            hf_prob=0.5, vf_prob=0.5, rr_prob=0.5, rr_degrees=None, normalize={"mean": list(mean), "std": list(std)},
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        v1, v2 = self.transform(self.images.load(i).convert("RGB"))
        return v1, v2


@dataclass
class SslPretrainResult:
    checkpoint: Path
    output_dir: Path
    steps: int
    images: int
    images_fingerprint: str
    train_seconds: float
    final_loss: float


def run_ssl_pretrain(cfg: SslPretrainConfig, loggers: list | None = None, callbacks: list | None = None) -> SslPretrainResult:
    from torch.utils.data import DataLoader

    from adapt.core.backbone import save_checkpoint
    from adapt.data.unlabeled import load_unlabeled, unlabeled_fingerprint
    from adapt.pipelines.default_backbone import load_backbone
    from adapt.training.devices import Devices, seed_everything, share_cpu_with_workers
    from adapt.training.resumable import run_pretraining
    from adapt.training.ssl import SelfSupervisedAdaptation

    seed_everything(cfg.seed)
    share_cpu_with_workers(cfg.accelerator, cfg.num_workers)
    devices = Devices(cfg.accelerator, cfg.devices, cfg.num_nodes, cfg.strategy, cfg.precision)
    backbone = load_backbone(cfg.model, cfg.init)  # --from default: the product's backbone
    if not hasattr(getattr(backbone.model.visual, "trunk", None), "blocks"):
        raise AdaptError(f"--objective ssl adapts CNN image towers (adapt-effnet-lite0/2); {backbone.arch} has none")
    images = load_unlabeled(cfg.data)
    fingerprint = unlabeled_fingerprint(images)
    dataset = TwoViewDataset(images, cfg.image_size, backbone.mean, backbone.std, cfg.min_scale)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers,
                        persistent_workers=cfg.num_workers > 0)
    if len(loader) == 0:
        raise AdaptError(f"{len(images)} unlabeled image(s) is fewer than one batch of {cfg.batch_size}")
    world = devices.world_size()
    steps_per_epoch = max(1, len(loader) // world)
    total = cfg.epochs * steps_per_epoch if cfg.max_steps < 0 else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    module = SelfSupervisedAdaptation(
        backbone.model.visual, backbone.encoder_spec("probe"), loss=cfg.loss, temperature=cfg.temperature, lr=cfg.lr,
        weight_decay=cfg.weight_decay, warmup_steps=min(cfg.warmup_steps, max(1, total // 10)), total_steps=total,
        trainable_from=cfg.trainable_from, distributed=world > 1,
    )
    out = cfg.output_dir
    logger.info("self-supervised (%s) adaptation of %s on %d unlabeled image(s) from %s: %d steps of %d x %d",
                cfg.loss, backbone.describe(), len(images), cfg.data, total, cfg.batch_size, world)
    run = run_pretraining(
        module, loader, devices, ckpt_dir=out / CKPT_DIR, resume=cfg.resume, total_steps=total, epochs=cfg.epochs,
        max_steps=cfg.max_steps, max_minutes=cfg.max_minutes, checkpoint_every=cfg.checkpoint_every, loggers=loggers,
        callbacks=callbacks, progress=cfg.progress, loss_name="ssl_loss", log_every_n_steps=5,
    )
    if not run.is_main:
        return SslPretrainResult(Path(), out, run.steps, len(images), fingerprint, run.seconds, run.final_loss)
    model = backbone.model.float().eval()  # the tower was trained in place; the text tower is untouched
    record = {"objective": "ssl", **asdict(cfg), "output_dir": str(out), "steps": run.steps,
              "from_weights": backbone.weights_id, "unlabeled_images": len(images), "unlabeled_fingerprint": fingerprint}
    weights = save_checkpoint(model, backbone.arch, out, model_cfg=backbone.model_cfg, extra={"pretrain": record})
    summary = {"steps": run.steps, "train_seconds": run.seconds, "final_loss": run.final_loss,
               "unlabeled_images": len(images), "unlabeled_fingerprint": fingerprint}
    (out / "pretrain_metrics.json").write_text(json.dumps(summary, indent=2))
    return SslPretrainResult(weights, out, run.steps, len(images), fingerprint, run.seconds, run.final_loss)
