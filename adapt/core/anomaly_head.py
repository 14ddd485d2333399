"""PatchCore's head: a memory bank of good patch features, nearest-neighbour scoring, a calibrated score.

The head takes the patch features of ``adapt.core.encoders`` (part ``patches``: ``[N, P, D]``, P = the
patch grid ``grid x grid`` flattened) and keeps ``bank [M, D]``, patch features of good images. A
patch's anomaly score is the Euclidean distance to its nearest bank entry (one matmul and a min,
so it exports to ONNX as is); an image's score is the mean of its ``top_k`` worst patches (1 =
PatchCore's worst patch; a few make the score of a thin or long defect steadier). The score becomes a
probability of ``defective`` with ``sigmoid((score - threshold) / scale)``: 0.5 exactly at the
decision threshold chosen on the few-shot validation split (``adapt.methods.patchcore``).

``anomaly_map`` gives the per-patch scores on the patch grid ``[N, grid, grid]`` (in the same
units as ``threshold``); clients upsample it to the image.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PatchCoreHead(nn.Module):
    """``[N, P, D]`` patch features -> logits ``[N, 2]`` (good, defective); see the module docstring."""

    kind = "patchcore"

    def __init__(self, bank: torch.Tensor, threshold: float, scale: float, grid: int, top_k: int = 1) -> None:
        super().__init__()
        bank = bank.detach().float()
        self.register_buffer("bank", bank)
        self.register_buffer("bank_sq", (bank * bank).sum(dim=1))
        self.threshold, self.scale, self.grid, self.top_k = float(threshold), float(scale), int(grid), int(top_k)
        if self.scale <= 0 or not math.isfinite(self.scale):
            raise ValueError(f"scale must be positive, got {scale}")
        if not 1 <= self.top_k <= self.grid * self.grid:
            raise ValueError(f"top_k must be in [1, {self.grid * self.grid}], got {top_k}")

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, P]`` distance of each patch to its nearest good patch."""
        sq = (features * features).sum(dim=-1, keepdim=True)
        d2 = sq - 2.0 * features @ self.bank.T + self.bank_sq
        return d2.min(dim=-1).values.clamp_min(0.0).sqrt()

    def image_scores(self, patch: torch.Tensor) -> torch.Tensor:
        """``[N, P]`` patch scores -> ``[N]``: the mean of the ``top_k`` worst."""
        return patch.amax(dim=-1) if self.top_k == 1 else patch.topk(self.top_k, dim=-1).values.mean(dim=-1)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """``[N]`` image anomaly score."""
        return self.image_scores(self.patch_scores(features))

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
        return self.logits_from_scores(self.image_scores(patch)), patch.reshape(-1, self.grid, self.grid)

    def config(self) -> dict:
        return {"bank_size": self.bank.shape[0], "dim": self.bank.shape[1], "threshold": self.threshold, "scale": self.scale,
                "grid": self.grid, "top_k": self.top_k}

    @classmethod
    def from_config(cls, cfg: dict) -> PatchCoreHead:
        return cls(torch.zeros(cfg["bank_size"], cfg["dim"]), cfg["threshold"], cfg["scale"], cfg["grid"], cfg.get("top_k", 1))
