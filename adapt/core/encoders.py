"""Image encoders: what a classifier computes from normalised pixels before its head.

An ``ImageEncoder`` wraps a backbone's image tower and returns the concatenation of one or
more *parts*, each L2-normalised:

- ``embedding``: the joint image-text embedding (``model.visual(x)``), the space the text tower
  speaks (zero-shot, CoOp, text heads, Tip-Adapter's zero-shot term);
- ``stages``: a CNN trunk's intermediate feature maps at ``stages`` (timm
  ``forward_intermediates`` indices), each globally average-pooled (``pooling="avg+max"``: also
  max-pooled) and L2-normalised, then concatenated. Defects are small and local; mid-level maps keep them, where the last layer
  has pooled them into ImageNet object evidence (measured: experiments/backbone/).
- ``patches`` (alone): the same stage maps kept spatial, for PatchCore (``adapt.core.anomaly_head``):
  each map averaged over a ``pool x pool`` neighbourhood (stride 1), resized to the grid of the
  first stage, L2-normalised per position and stage (measured better than raw maps on this
  backbone: experiments/anomaly/), concatenated over channels: ``[N, grid * grid, D]``. On an
  open_clip ViT the "stages" are transformer block indices and the maps their patch tokens.

For the pooled ``stages`` part a ViT tower only has the embedding; asking it for ``stages`` gives
the embedding instead, so every method works on every backbone.

``views`` > 1 makes the encoder dihedral test-time augmentation: it encodes the first ``views`` of
the 8 dihedral views of each image (``dihedral``: identity, its mirror image, then the quarter
turns and theirs) and returns the mean feature, so a linear head on it gives the mean of the views'
logits. It is part of the exported graph: the service sees one model, as before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

EMBEDDING, STAGES, PATCHES = "embedding", "stages", "patches"
DIHEDRAL_VIEWS = 8  # quarter turns x mirror
POOLINGS = ("avg", "avg+max")  # how a ``stages`` map becomes a vector (max: a small mark on a busy surface still shows)


def dihedral(x: torch.Tensor, view: int, dims: tuple[int, int] = (-2, -1)) -> torch.Tensor:
    """View ``view`` (0-7) of images ``x`` over its two spatial ``dims``: ``view // 2`` quarter turns,
    then a mirror (the last spatial dim reversed) when ``view`` is odd. 0 is the identity, 1 the mirror
    image. ``dims=(-2, -1)`` for ``[N, C, H, W]`` tensors, ``(1, 2)`` for ``[N, H, W, 3]`` pixels."""
    if not 0 <= view < DIHEDRAL_VIEWS:
        raise ValueError(f"a dihedral view is 0-{DIHEDRAL_VIEWS - 1}, got {view}")
    out = torch.rot90(x, view // 2, dims=dims) if view // 2 else x
    return torch.flip(out, dims=(dims[1],)) if view % 2 else out


@dataclass(frozen=True)
class EncoderSpec:
    """Which parts an encoder returns; travels in ``ClassifierInfo`` so a saved classifier rebuilds."""

    parts: tuple[str, ...] = (EMBEDDING,)
    stages: tuple[int, ...] = ()
    pool: int = 1  # ``patches``: local neighbourhood averaged into each patch feature
    views: int = 1  # test-time augmentation: mean feature over the first ``views`` dihedral views
    pooling: str = "avg"  # ``stages``: each map's global average ("avg"), or its average and its maximum ("avg+max")

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))
        object.__setattr__(self, "stages", tuple(int(s) for s in self.stages))
        if not self.parts or not set(self.parts) <= {EMBEDDING, STAGES, PATCHES}:
            raise ValueError(f"encoder parts must be a non-empty subset of {EMBEDDING}, {STAGES}, {PATCHES}: {self.parts}")
        if PATCHES in self.parts and self.parts != (PATCHES,):
            raise ValueError("the 'patches' part cannot be combined with other parts")
        if {STAGES, PATCHES} & set(self.parts) and not self.stages:
            raise ValueError(f"the '{self.parts[-1]}' part needs stage indices")
        if self.pool < 1 or self.pool % 2 == 0:
            raise ValueError(f"pool must be an odd number >= 1, got {self.pool}")
        if not 1 <= self.views <= DIHEDRAL_VIEWS:
            raise ValueError(f"views must be 1-{DIHEDRAL_VIEWS}, got {self.views}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.views > 1 and PATCHES in self.parts:
            raise ValueError("test-time views average pooled features; 'patches' keeps the spatial map")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict | None) -> "EncoderSpec":
        return cls(**(d or {}))

    def key(self) -> str:
        pool = f":pool{self.pool}" if PATCHES in self.parts else ""
        views = f":views{self.views}" if self.views > 1 else ""
        pooling = f":{self.pooling}" if self.pooling != "avg" else ""
        return f"{'+'.join(self.parts)}:{','.join(map(str, self.stages))}{pool}{views}{pooling}"

    def single_view(self) -> "EncoderSpec":
        """The same encoder without test-time views (what each view goes through)."""
        return replace(self, views=1)


@dataclass(frozen=True)
class FeatureLayout:
    """Where each part sits in the concatenated feature vector (for heads that use one part)."""

    sizes: dict[str, int] = field(default_factory=dict)

    def slice(self, part: str) -> slice:
        start = 0
        for name, size in self.sizes.items():
            if name == part:
                return slice(start, start + size)
            start += size
        raise KeyError(part)


def spec_for(visual: nn.Module, parts: tuple[str, ...], stages: tuple[int, ...]) -> EncoderSpec:
    """``parts`` on this tower: ``stages`` becomes ``embedding`` where the tower has no trunk stages."""
    if not stages or not hasattr(getattr(visual, "trunk", None), "forward_intermediates"):
        return EncoderSpec((EMBEDDING,))
    return EncoderSpec(parts, stages)


def is_vit(visual: nn.Module) -> bool:
    """An open_clip VisionTransformer: block intermediates as patch-token maps."""
    return not hasattr(visual, "trunk") and hasattr(visual, "forward_intermediates") and hasattr(visual, "transformer")


def patch_levels(visual: nn.Module) -> int:
    """How many levels ``patches`` can take maps from (CNN trunk stages or ViT blocks); 0 if none."""
    trunk = getattr(visual, "trunk", None)
    if hasattr(trunk, "forward_intermediates"):
        return len(getattr(trunk, "feature_info", ())) or 0
    return len(visual.transformer.resblocks) if is_vit(visual) else 0


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)  # timm's BatchNormAct2d is a BatchNorm2d


def freeze_norm_stats(module: nn.Module) -> nn.Module:
    """Put every batch-norm layer of ``module`` in eval mode (call after ``module.train()``): a
    locked or few-shot-tuned CNN must keep its ImageNet statistics."""
    for m in module.modules():
        if isinstance(m, BATCH_NORMS):
            m.eval()
    return module


def patches_from_maps(maps: list[torch.Tensor], pool: int) -> torch.Tensor:
    """Stage maps ``[N, C_i, h_i, w_i]`` -> ``[N, h_0 * w_0, sum C_i]`` (see the module docstring)."""
    size = maps[0].shape[-2:]
    parts = []
    for m in maps:
        if pool > 1:
            m = F.avg_pool2d(m, pool, stride=1, padding=pool // 2, count_include_pad=False)
        if m.shape[-2:] != size:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        parts.append(F.normalize(m, dim=1))
    return torch.cat(parts, dim=1).flatten(2).transpose(1, 2)


class ImageEncoder(nn.Module):
    """normalised images ``[N, 3, H, W]`` -> features ``[N, D]`` (the parts of ``spec``, concatenated)."""

    def __init__(self, visual: nn.Module, spec: EncoderSpec = EncoderSpec()) -> None:
        super().__init__()
        self.visual, self.spec = visual, spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.views > 1:
            # one view after the other, not one batch of all views: the exported graph then needs the
            # activation memory of one view (a batch of 64 images x 8 views took 9 GB in ONNX Runtime)
            total = self.encode(x)
            for v in range(1, self.spec.views):
                total = total + self.encode(dihedral(x, v))
            return total / self.spec.views
        return self.encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The features of ``x`` itself (one view)."""
        if self.spec.parts == (EMBEDDING,):
            return F.normalize(self.visual(x), dim=-1)
        if self.spec.parts == (PATCHES,) and is_vit(self.visual):
            out = self.visual.forward_intermediates(x, indices=list(self.spec.stages), stop_early=True, intermediates_only=True)
            return patches_from_maps(out["image_intermediates"], self.spec.pool)
        trunk = self.visual.trunk
        need_embedding = EMBEDDING in self.spec.parts
        final, maps = trunk.forward_intermediates(x, indices=list(self.spec.stages), stop_early=not need_embedding)
        if self.spec.parts == (PATCHES,):
            return patches_from_maps(maps, self.spec.pool)
        out = []
        for part in self.spec.parts:
            if part == EMBEDDING:
                out.append(F.normalize(self.visual.head(trunk.forward_head(final)), dim=-1))
            else:
                pooled = [F.normalize(m.mean(dim=(2, 3)), dim=-1) for m in maps]
                if self.spec.pooling == "avg+max":
                    pooled += [F.normalize(m.amax(dim=(2, 3)), dim=-1) for m in maps]
                out.append(F.normalize(torch.cat(pooled, dim=1), dim=-1))
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def layout(self, image_size: int) -> FeatureLayout:
        """The size of each part, measured on one blank image."""
        was_training = self.training
        self.eval()
        x = torch.zeros(1, 3, image_size, image_size, device=next(self.parameters()).device)
        sizes = {}
        if EMBEDDING in self.spec.parts:
            sizes[EMBEDDING] = int(self.visual(x).shape[1])
        if STAGES in self.spec.parts:
            sizes[STAGES] = int(ImageEncoder(self.visual, EncoderSpec((STAGES,), self.spec.stages, pooling=self.spec.pooling)).encode(x).shape[1])
        self.train(was_training)
        return FeatureLayout({p: sizes[p] for p in self.spec.parts})
