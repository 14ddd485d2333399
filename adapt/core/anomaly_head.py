"""PatchCore's head: a memory bank of good patch features, nearest-neighbour scoring, a calibrated score.

The head takes the patch features of ``adapt.core.encoders`` (part ``patches``: ``[N, P, D]``, P = the
patch grid ``grid x grid`` flattened) and keeps ``bank [M, D]``, patch features of good images. A
patch's anomaly score is the Euclidean distance to its nearest bank entry (one matmul and a min,
so it exports to ONNX as is); an image's score is the mean of its ``top_k`` worst patches (1 =
PatchCore's worst patch; a few make the score of a thin or long defect steadier). The score becomes a
probability of ``defective`` with ``sigmoid((score - threshold) / scale)``: 0.5 exactly at the
decision threshold chosen on the few-shot validation split (``adapt.methods.patchcore``).

Texture-wide evidence (``combine`` other than ``local``): a defect that changes a whole surface
slightly (its direction, density, contrast or sharpness) leaves every patch close to *some* good
patch, so the patch score misses it. The head also scores per-image statistics of the patch
features (``image_stats``: their mean, and their standard deviation over the grid, for every
channel): the *image score* is the distance, in the Mahalanobis metric of the good images'
statistics (Ledoit-Wolf shrinkage, fitted by ``adapt.methods.patchcore``), to their mean (a
PaDiM-style Gaussian: ``image_bank`` holds one row) or to the nearest good image (kNN: one row per
good image). ``image_whiten`` maps statistics into that metric (``P = W W^T``, ``image_bank`` is
already mapped). Patch and image scores are standardised by the good validation images' mean and
standard deviation (``norm``) and combined by ``max`` or ``sum``, or the image score is used alone
(``image``); ``threshold`` and ``scale`` are then in those units (which of these a fit uses may be
chosen per fit on its validation images: ``adapt.methods.patchcore``, ``combine=auto``). The patch features may carry more channels than the bank (its first
``bank.shape[1]`` channels make the patch score, all of them the image statistics: e.g. a deeper
stage that only feeds the image score).

``anomaly_map`` gives the per-patch scores on the patch grid ``[N, grid, grid]`` (patch-distance
units; ``map_threshold`` is the patch score at the decision threshold); clients upsample it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adapt.core.anomaly_choices import COMBINE, IMAGE_STATS


def image_stats(features: torch.Tensor, stats: str = "mean_std") -> torch.Tensor:
    """``[N, P, D]`` patch features -> ``[N, D]`` (their mean over the grid) or ``[N, 2D]`` (and their std)."""
    mean = features.mean(dim=1)
    if stats == "mean":
        return mean
    return torch.cat([mean, ((features - mean[:, None]) ** 2).mean(dim=1).clamp_min(1e-12).sqrt()], dim=-1)


class PatchCoreHead(nn.Module):
    """``[N, P, D]`` patch features -> logits ``[N, 2]`` (good, defective); see the module docstring."""

    kind = "patchcore"

    def __init__(self, bank: torch.Tensor, threshold: float, scale: float, grid: int, top_k: int = 1, *, combine: str = "local",
                 stats: str = "mean_std", image_bank: torch.Tensor | None = None,
                 image_whiten: torch.Tensor | None = None, norm: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0),
                 map_threshold: float | None = None) -> None:
        super().__init__()
        bank = bank.detach().float()
        self.register_buffer("bank", bank)
        self.register_buffer("bank_sq", (bank * bank).sum(dim=1))
        self.threshold, self.scale, self.grid, self.top_k = float(threshold), float(scale), int(grid), int(top_k)
        if self.scale <= 0 or not math.isfinite(self.scale):
            raise ValueError(f"scale must be positive, got {scale}")
        if not 1 <= self.top_k <= self.grid * self.grid:
            raise ValueError(f"top_k must be in [1, {self.grid * self.grid}], got {top_k}")
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
        if stats not in IMAGE_STATS:
            raise ValueError(f"image statistics must be one of {', '.join(IMAGE_STATS)}, got {stats!r}")
        self.combine, self.stats = combine, stats
        self.norm = tuple(float(v) for v in norm)  # good validation: mean, std of the patch score; mean, std of the image score
        if min(self.norm[1], self.norm[3]) <= 0:
            raise ValueError(f"norm standard deviations must be positive, got {norm}")
        self.map_threshold = self.threshold if map_threshold is None else float(map_threshold)
        if combine != "local":
            if image_bank is None or image_whiten is None:
                raise ValueError(f"combine={combine} needs image_bank and image_whiten (the good images' statistics)")
            image_bank = image_bank.detach().float()
            self.register_buffer("image_bank", image_bank)
            self.register_buffer("image_bank_sq", (image_bank * image_bank).sum(dim=1))
            self.register_buffer("image_whiten", image_whiten.detach().float())

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, P]`` distance of each patch to its nearest good patch."""
        if features.shape[-1] != self.bank.shape[1]:  # channels beyond the bank's feed the image statistics only
            features = features[..., : self.bank.shape[1]]
        sq = (features * features).sum(dim=-1, keepdim=True)
        d2 = sq - 2.0 * features @ self.bank.T + self.bank_sq
        return d2.min(dim=-1).values.clamp_min(0.0).sqrt()

    def image_scores(self, patch: torch.Tensor) -> torch.Tensor:
        """``[N, P]`` patch scores -> ``[N]``: the mean of the ``top_k`` worst."""
        return patch.amax(dim=-1) if self.top_k == 1 else patch.topk(self.top_k, dim=-1).values.mean(dim=-1)

    def image_distance(self, features: torch.Tensor) -> torch.Tensor:
        """``[N]`` Mahalanobis distance of the image statistics to the nearest ``image_bank`` row."""
        w = image_stats(features, self.stats) @ self.image_whiten
        d2 = (w * w).sum(dim=-1, keepdim=True) - 2.0 * w @ self.image_bank.T + self.image_bank_sq
        return d2.min(dim=-1).values.clamp_min(0.0).sqrt()

    def combined(self, local: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The patch score ``local [N]`` combined with the image score (see the module docstring)."""
        if self.combine == "local":
            return local
        m_l, s_l, m_g, s_g = self.norm
        z_image = (self.image_distance(features) - m_g) / s_g
        if self.combine == "image":
            return z_image
        z_local = (local - m_l) / s_l
        return torch.maximum(z_local, z_image) if self.combine == "max" else z_local + z_image

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """``[N]`` image anomaly score."""
        return self.combined(self.image_scores(self.patch_scores(features)), features)

    def logits_from_scores(self, scores: torch.Tensor) -> torch.Tensor:
        z = (scores - self.threshold) / self.scale
        return torch.stack([torch.zeros_like(z), z], dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits_from_scores(self.scores(features))

    def anomaly_map(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, grid, grid]`` per-patch scores."""
        return self.patch_scores(features).reshape(-1, self.grid, self.grid)

    def forward_with_map(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patch = self.patch_scores(features)
        return self.logits_from_scores(self.combined(self.image_scores(patch), features)), patch.reshape(-1, self.grid, self.grid)

    def config(self) -> dict:
        cfg = {"bank_size": self.bank.shape[0], "dim": self.bank.shape[1], "threshold": self.threshold, "scale": self.scale,
               "grid": self.grid, "top_k": self.top_k, "combine": self.combine, "stats": self.stats, "norm": list(self.norm),
               "map_threshold": self.map_threshold}
        if self.combine != "local":
            cfg["image_bank_size"], cfg["image_dim"] = self.image_bank.shape
        return cfg

    @classmethod
    def from_config(cls, cfg: dict) -> PatchCoreHead:
        g = cfg.get("image_dim")
        image = {"image_bank": torch.zeros(cfg["image_bank_size"], g), "image_whiten": torch.zeros(g, g)} if g else {}
        return cls(torch.zeros(cfg["bank_size"], cfg["dim"]), cfg["threshold"], cfg["scale"], cfg["grid"], cfg.get("top_k", 1),
                   combine=cfg.get("combine", "local"), stats=cfg.get("stats", "mean_std"), norm=tuple(cfg.get("norm", (0.0, 1.0, 0.0, 1.0))),
                   map_threshold=cfg.get("map_threshold"), **image)
