"""``adapt pretrain``: contrastive pretraining of an open_clip backbone, and the default backbone.

``run_pretrain`` builds the model (random init or continued from ``init`` weights), the
caption data (synthetic generator, manifests, unlabeled in-domain ELPV train images), runs
``adapt.training.contrastive.ContrastivePretraining`` through ``adapt.training.resumable.run_pretraining``
(any accelerator, devices, nodes, DDP; checkpoints every N steps for ``resume``), writes an open_clip-loadable
checkpoint + config, and measures zero-shot accuracy on held-out synthetic defects.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from adapt.errors import AdaptError

logger = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
ZERO_SHOT_SEED = 424242  # held-out generator stream, never used for training


@dataclass
class PretrainConfig:
    data: list[str] = field(default_factory=lambda: ["synthetic"])  # synthetic, elpv (train pool, unlabeled), manifest paths
    model: str = "adapt-small"  # open_clip architecture
    init: str = "none"  # starting weights: none, a checkpoint file, or an open_clip tag
    loss: str = "clip"  # clip | siglip
    output_dir: Path | None = None
    epochs: int = 1
    max_steps: int = -1  # stop after this many optimiser steps (-1: run all epochs)
    batch_size: int = 64  # per device
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 50
    synthetic_samples: int = 20000  # synthetic pairs per epoch
    domain_repeat: int = 1  # how many times the in-domain images appear per epoch
    ssl_data: list[str] = field(default_factory=list)  # image-only sources for the self-supervised term (e.g. elpv)
    ssl_weight: float = 1.0  # weight of the self-supervised term when ssl_data is given
    ssl_batch_size: int = 32  # images per step for the self-supervised term (two views each)
    vision_lr_scale: float = 1.0  # learning-rate factor of the image tower; 0 locks it (LiT)
    seed: int = 0
    num_workers: int = 1  # data-loader worker processes
    accelerator: str = "auto"
    devices: str = "1"  # int, list, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # e.g. ddp
    precision: str = "auto"  # auto: bf16-mixed on GPUs that support it, else 32-true
    checkpoint_every: int = 100  # optimiser steps between resumable checkpoints
    resume: bool = False  # continue from OUTPUT_DIR/checkpoints/last.ckpt
    max_minutes: float | None = None  # wall-clock cap (training stops cleanly, the checkpoint is still written)
    zero_shot_per_class: int = 25  # held-out synthetic images per class for the zero-shot check
    progress: bool = True

    def __post_init__(self) -> None:
        if self.loss not in ("clip", "siglip"):
            raise ValueError(f"loss must be clip or siglip, got {self.loss!r}")
        if self.batch_size < 2:
            raise ValueError("contrastive pretraining needs batch_size >= 2")
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if self.output_dir is None:
            self.output_dir = Path("runs") / "pretrain" / f"{self.model}-{self.loss}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.output_dir = Path(self.output_dir)

    def devices_spec(self):
        from adapt.training.devices import Devices

        return Devices(self.accelerator, self.devices, self.num_nodes, self.strategy, self.precision)


# Named recipes. "default" is the embedded backbone, chosen by measurement on a dev split of the
# ELPV train pool (experiments/pretraining/results.md): CLIP on synthetic image-caption pairs
# (a third of them electroluminescence-like solar cells) plus the self-supervised term on the
# unlabeled ELPV train pool: 520 steps, about 14 minutes on 2 CPU cores (capped at 20 on slower machines).
PRESETS: dict[str, PretrainConfig] = {
    "default": PretrainConfig(
        data=["synthetic", "synthetic-solar"], model="adapt-small", loss="clip", epochs=50, max_steps=520,
        batch_size=32, lr=1e-3, warmup_steps=60, synthetic_samples=40000,
        ssl_data=["elpv"], ssl_weight=1.0, ssl_batch_size=64, max_minutes=20, checkpoint_every=100,
    ),
    "tiny": PretrainConfig(data=["synthetic"], model="adapt-tiny", loss="clip", epochs=1, batch_size=32, synthetic_samples=512, lr=1e-3),
}


def preset(name: str, **overrides) -> PretrainConfig:
    if name not in PRESETS:
        raise AdaptError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    base = asdict(PRESETS[name])
    base.update({k: v for k, v in overrides.items() if v is not None})
    return PretrainConfig(**base)


@dataclass
class PretrainResult:
    checkpoint: Path
    output_dir: Path
    steps: int
    samples_per_s: float
    train_seconds: float
    final_loss: float
    zero_shot: dict


def _model(cfg: PretrainConfig):
    """The model to train and the open_clip config it must be saved with."""
    import open_clip

    import adapt.core.backbone as backbone

    model_cfg = backbone.model_config(cfg.model)
    if model_cfg is None:
        raise AdaptError(f"unknown architecture '{cfg.model}'")
    kwargs = {}
    if cfg.loss == "siglip":  # SigLIP needs a learnable bias; record it so plain open_clip rebuilds the same model
        kwargs = {"init_logit_scale": math.log(10), "init_logit_bias": -10.0}
        model_cfg = {**model_cfg, **kwargs}
    init = (cfg.init or "none").strip()
    if init.lower() == "none":
        model = open_clip.create_model(cfg.model, output_dict=True, **kwargs)
    else:
        b = backbone.create_backbone(cfg.model, init)
        model = b.model
        model.output_dict = True
        if cfg.loss == "siglip" and model.logit_bias is None:
            raise AdaptError("continuing SigLIP pretraining needs weights that have a logit_bias; use --loss clip")
    return model, model_cfg


def run_pretrain(cfg: PretrainConfig, loggers: list | None = None, callbacks: list | None = None) -> PretrainResult:
    """Pretrain as ``cfg`` says; ``loggers``/``callbacks`` go to the Lightning Trainer."""
    threads = torch.get_num_threads()
    try:
        return _run_pretrain(cfg, loggers, callbacks)
    finally:
        torch.set_num_threads(threads)  # share_cpu_with_workers may have lowered it


def _run_pretrain(cfg: PretrainConfig, loggers: list | None, callbacks: list | None) -> PretrainResult:
    import open_clip
    from torch.utils.data import DataLoader

    from adapt.core.backbone import save_checkpoint
    from adapt.data.captions import CaptionDataset, resolve_sources
    from adapt.training.devices import seed_everything, share_cpu_with_workers
    from adapt.training.contrastive import ContrastivePretraining
    from adapt.training.resumable import combined_loader, run_pretraining

    seed_everything(cfg.seed)
    share_cpu_with_workers(cfg.accelerator, cfg.num_workers)
    devices = cfg.devices_spec()
    model, model_cfg = _model(cfg)
    image_size = int(model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list)) else model.visual.image_size)
    pp = model.visual.preprocess_cfg
    tokenizer = open_clip.get_tokenizer(cfg.model)
    sources = resolve_sources(cfg.data, synthetic_samples=cfg.synthetic_samples, seed=cfg.seed, image_size=image_size, domain_repeat=cfg.domain_repeat)
    dataset = CaptionDataset(sources, tokenizer, image_size)
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
    )
    if len(loader) == 0:
        raise AdaptError(f"{len(dataset)} pretraining pairs is fewer than one batch of {cfg.batch_size}")
    ssl_weight = cfg.ssl_weight if cfg.ssl_data else 0.0
    if ssl_weight > 0:
        from adapt.data.captions import TwoViews

        ssl_sources = resolve_sources(cfg.ssl_data, synthetic_samples=cfg.synthetic_samples, seed=cfg.seed + 7, image_size=image_size)
        views = DataLoader(TwoViews(ssl_sources, image_size), batch_size=cfg.ssl_batch_size, shuffle=True, drop_last=True,
                           num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
        train_data = combined_loader({"clip": loader, "ssl": views})
    else:
        train_data = loader
    world = devices.world_size()
    steps_per_epoch = max(1, len(loader) // world)
    total = cfg.epochs * steps_per_epoch if cfg.max_steps < 0 else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    module = ContrastivePretraining(
        model, loss=cfg.loss, mean=pp["mean"], std=pp["std"], lr=cfg.lr, weight_decay=cfg.weight_decay,
        warmup_steps=min(cfg.warmup_steps, max(1, total // 10)), total_steps=total, ssl_weight=ssl_weight,
        vision_lr_scale=cfg.vision_lr_scale,
    )
    out = cfg.output_dir
    logger.info(
        "pretraining %s (%s loss%s) on %s: %d pairs, %d steps of %d x %d device(s)",
        cfg.model, cfg.loss, f" + {ssl_weight:g} x self-supervised on {', '.join(cfg.ssl_data)}" if ssl_weight else "",
        " + ".join(s.name for s in sources), len(dataset), total, cfg.batch_size, world,
    )
    run = run_pretraining(
        module, train_data, devices, ckpt_dir=out / CKPT_DIR, resume=cfg.resume, total_steps=total, epochs=cfg.epochs,
        max_steps=cfg.max_steps, max_minutes=cfg.max_minutes, checkpoint_every=cfg.checkpoint_every, loggers=loggers,
        callbacks=callbacks, progress=cfg.progress, loss_name="train_loss",
    )
    rate = (run.steps - run.start_step) * cfg.batch_size * world / max(run.seconds, 1e-9)
    if not run.is_main:
        return PretrainResult(Path(), out, run.steps, rate, run.seconds, run.final_loss, {})
    model = module.model.float().eval()
    weights = save_checkpoint(
        model, cfg.model, out, model_cfg=model_cfg,
        extra={"pretrain": {**asdict(cfg), "output_dir": str(out), "steps": run.steps}},
    )
    zero_shot = synthetic_zero_shot(model, tokenizer, image_size, pp, cfg.zero_shot_per_class)
    summary = {"steps": run.steps, "samples_per_s": rate, "train_seconds": run.seconds, "final_loss": run.final_loss, "zero_shot": zero_shot}
    (out / "pretrain_metrics.json").write_text(json.dumps(summary, indent=2))
    return PretrainResult(weights, out, run.steps, rate, run.seconds, run.final_loss, zero_shot)


@torch.no_grad()
def synthetic_zero_shot(model, tokenizer, image_size: int, pp: dict, per_class: int = 25) -> dict:
    """Zero-shot accuracy on held-out synthetic images (a generator stream never used for training):

    - ``accuracy``: 9-way, good part vs each of the 8 defect kinds, ``per_class`` images each;
    - ``good_vs_defect_balanced_accuracy``: 2-way prompts ("flawless" vs "defective" surface) on the
      same images, as balanced accuracy (the good class is 1 of 9, so plain accuracy would flatter).
    """
    from adapt.contract.imageio import to_model_pixels
    from adapt.core.classifier import PixelNormalizer
    from adapt.data import synthetic

    def embed(prompts: list[str]) -> torch.Tensor:
        emb = torch.nn.functional.normalize(model.encode_text(tokenizer(prompts)).float(), dim=-1).mean(0)
        return torch.nn.functional.normalize(emb, dim=-1)

    classes = ["good", *synthetic.DEFECTS]
    text = torch.stack([embed(synthetic.zero_shot_prompts(c)) for c in classes])
    binary_text = torch.stack([embed(synthetic.zero_shot_prompts("good")), embed(synthetic.zero_shot_prompts("defective"))])
    normalize = PixelNormalizer(pp["mean"], pp["std"])
    correct, total = 0, 0
    binary_recall = {"good": [], "defect": []}
    for k, c in enumerate(classes):
        imgs = [
            to_model_pixels(synthetic.render_sample(ZERO_SHOT_SEED, k * 1000 + i, max(64, image_size), defect=c).image, image_size)
            for i in range(per_class)
        ]
        feats = torch.nn.functional.normalize(model.encode_image(normalize(torch.from_numpy(np.stack(imgs)))).float(), dim=-1)
        correct += int(((feats @ text.T).argmax(dim=1) == k).sum())
        says_defect = (feats @ binary_text.T).argmax(dim=1) == 1
        binary_recall["good" if k == 0 else "defect"].extend((says_defect == (k != 0)).tolist())
        total += per_class
    return {
        "classes": len(classes),
        "accuracy": correct / total,
        "chance": 1 / len(classes),
        "good_vs_defect_balanced_accuracy": float(np.mean([np.mean(v) for v in binary_recall.values()])),
        "images": total,
    }


def build_default_backbone(arch: str, out_dir: Path) -> Path:
    """Pretrain the ``default`` preset for ``arch`` into ``out_dir`` (the user cache) and return the weights."""
    cfg = preset("default", model=arch, output_dir=out_dir / "work")
    if cfg.output_dir.joinpath(CKPT_DIR, "last.ckpt").is_file():
        cfg = replace(cfg, resume=True)  # an interrupted build continues
    result = run_pretrain(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (result.checkpoint.name, f"{arch}.json", "open_clip_config.json", "pretrain_metrics.json"):
        (cfg.output_dir / name).replace(out_dir / name)
    logger.info("default backbone ready: %s (zero-shot synthetic accuracy %.1f%%)", out_dir, 100 * result.zero_shot.get("accuracy", 0))
    return out_dir / result.checkpoint.name
