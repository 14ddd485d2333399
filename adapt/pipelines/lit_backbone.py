"""Building the LiT default backbone of an EfficientNet-Lite architecture (``LitRecipe``).

The ImageNet image trunk is locked, so its pooled features are computed once; the text tower and
the image projection are then trained on them with the CLIP loss (``adapt.training.lit``). The
result is written beside its zero-shot check, the weights last (their presence means ready).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

logger = logging.getLogger(__name__)


def _caption_pairs(recipe, image_size: int):
    """The recipe's (a ``default_backbone.LitRecipe``) (image, caption) sources, as ``adapt.data.captions.CaptionSource`` objects."""
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
    """Pooled trunk features ``[N, C]`` of every image of ``sources`` (the locked part of LiT, not
    L2-normalised), through ``adapt.core.features.encode_batches``; and the captions, in order."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from adapt.contract.imageio import to_model_pixels
    from adapt.core.features import encode_batches

    class Pairs(Dataset):
        def __init__(self) -> None:
            self.index = [(s, i) for s in sources for i in range(s.n)]

        def __len__(self) -> int:
            return len(self.index)

        def __getitem__(self, k: int):
            source, i = self.index[k]
            img, caption = source.get(i)
            return torch.from_numpy(to_model_pixels(img, image_size)), caption

    loader = DataLoader(Pairs(), batch_size=batch_size, num_workers=1, collate_fn=lambda b: (torch.stack([p for p, _ in b]), [c for _, c in b]))
    captions = []

    def pixels_of(batch):  # and keep the captions, in order
        captions.extend(batch[1])
        return batch[0]

    feats = encode_batches(model.visual.trunk, loader, pixels_of=pixels_of, mean=mean, std=std, l2_normalize=False,
                           channels_last=True, progress=progress, desc="image features (locked tower)")
    return feats, captions


def build_lit_backbone(recipe, out_dir: Path, progress: bool = True) -> Path:
    """Build the LiT default for ``recipe.arch`` into ``out_dir``; returns the checkpoint path."""
    import open_clip
    from torch.utils.data import DataLoader, TensorDataset

    from adapt.core import imagenet
    from adapt.core.backbone import load_imagenet_tower, model_config, save_checkpoint, weights_loaded_after_creation
    from adapt.pipelines.pretrain import synthetic_zero_shot
    from adapt.training.devices import seed_everything
    from adapt.training.lit import LockedImageTextTraining, fit_locked_image

    t0 = time.perf_counter()
    seed_everything(recipe.seed, workers=False)
    kwargs = {"init_logit_scale": 2.302585, "init_logit_bias": -10.0} if recipe.loss == "siglip" else {}
    model_cfg = {**model_config(recipe.arch), **kwargs}
    with weights_loaded_after_creation():  # the ImageNet tower is loaded next: no "initialized randomly" line
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
    fit_locked_image(module, loader, epochs=recipe.epochs, steps=steps, progress=progress)
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
