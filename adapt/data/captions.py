"""Image-caption sources for contrastive pretraining.

- ``synthetic``: the procedural generator, rendered on the fly (``adapt.data.synthetic``);
  ``synthetic-solar``: only its electroluminescence-like solar cells;
- a manifest: CSV or JSONL with ``image,caption`` (image paths relative to the manifest),
  validated up front so a bad row is reported by its line number before any training;
- ``elpv``: the ELPV *train pool* without its labels, captioned from metadata (module type)
  only, for domain-adaptive pretraining. The ELPV test split is never read here.

Every source yields ``(PIL.Image, caption)``; ``CaptionDataset`` turns them into augmented
uint8 pixels and token ids for the training loop, ``TwoViews`` into two augmented views of
the image alone (captions unused) for the self-supervised term.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from adapt.contract.imageio import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    read_image,
    to_model_pixels,
)
from adapt.errors import DataError

logger = logging.getLogger(__name__)

ELPV_CAPTIONS = (
    "an electroluminescence image of a {} solar cell.",
    "an EL image of a {} photovoltaic cell.",
    "a grayscale electroluminescence photo of a {} silicon solar cell.",
    "a {} solar cell imaged by electroluminescence.",
    "a close-up EL image of one cell of a {} solar module.",
)
MODULE_WORDS = {"mono": "monocrystalline", "poly": "polycrystalline"}


@dataclass(frozen=True)
class CaptionSource:
    """``n`` items; ``get(i)`` returns ``(image, caption)``; deterministic in ``i``."""

    name: str
    n: int
    get: Callable[[int], tuple[Image.Image, str]]


def synthetic_source(n: int, seed: int, image_size: int, surfaces: Sequence[str] | None = None) -> CaptionSource:
    """``n`` generated pairs; ``surfaces`` restricts (and cycles through) the surface families."""
    from adapt.data import synthetic

    render_size = max(image_size, 64)
    cycle = tuple(surfaces) if surfaces else None

    def get(i: int):
        s = synthetic.render_sample(seed, i, render_size, surface=cycle[i % len(cycle)] if cycle else None)
        return s.image, s.caption

    label = f",surfaces={'+'.join(cycle)}" if cycle else ""
    return CaptionSource(f"synthetic(n={n},seed={seed}{label})", n, get)


def elpv_unlabeled_source(repeat: int = 1) -> CaptionSource:
    """The ELPV train pool (1,968 cells) with captions from module type only, never labels."""
    from adapt.data import elpv

    paths, _, types = elpv.read_labels()
    train_idx, _ = elpv.fixed_split()
    root = elpv.data_dir()
    n_pool = len(train_idx)

    def get(i: int):
        j = int(train_idx[i % n_pool])
        template = ELPV_CAPTIONS[(i // n_pool + j) % len(ELPV_CAPTIONS)]
        return read_image(root / paths[j]), template.format(MODULE_WORDS.get(types[j], types[j]))

    return CaptionSource(f"elpv-train-unlabeled(x{repeat})", n_pool * repeat, get)


def manifest_source(path: str | Path) -> CaptionSource:
    """A CSV (``image,caption`` header) or JSONL (``{"image": ..., "caption": ...}``) manifest."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pretraining manifest not found: {path}")
    rows = _read_manifest(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    root = path.parent

    def get(i: int):
        image, caption = rows[i]
        return read_image(root / image), caption

    return CaptionSource(f"manifest({path.name})", len(rows), get)


def _read_manifest(path: Path) -> list[tuple[str, str]]:
    rows: list[tuple[int, str, str]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{line_no}: expected an object with image and caption")
            rows.append((line_no, str(obj.get("image") or "").strip(), str(obj.get("caption") or "").strip()))
    else:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"image", "caption"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))} (expected image,caption)")
            for line_no, row in enumerate(reader, start=2):
                rows.append((line_no, (row.get("image") or "").strip(), (row.get("caption") or "").strip()))
    out = []
    for line_no, image, caption in rows:
        if not image:
            raise DataError(f"{path}:{line_no}: empty image path")
        if not caption:
            raise DataError(f"{path}:{line_no}: empty caption for {image}")
        file = path.parent / image
        if not file.is_file():
            raise DataError(f"{path}:{line_no}: image not found: {image}")
        if file.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{path}:{line_no}: not an image file type: {image}")
        out.append((image, caption))
    return out


def resolve_sources(specs: Sequence[str], *, synthetic_samples: int, seed: int, image_size: int, domain_repeat: int = 1) -> list[CaptionSource]:
    sources = []
    for spec in specs:
        key = spec.strip().lower()
        if key == "synthetic":
            sources.append(synthetic_source(synthetic_samples, seed, image_size))
        elif key == "synthetic-solar":  # electroluminescence-like solar cells only
            from adapt.data.synthetic import EL_SURFACES

            sources.append(synthetic_source(synthetic_samples, seed + 1, image_size, sorted(EL_SURFACES)))
        elif key == "elpv":
            sources.append(elpv_unlabeled_source(domain_repeat))
        elif key:
            sources.append(manifest_source(spec.strip()))
    if not sources:
        raise DataError("no pretraining data given (use synthetic, elpv, or a CSV/JSONL manifest)")
    return sources


class CaptionDataset(Dataset):
    """Concatenated caption sources -> ``(uint8 [H, W, 3] pixels, token ids)``, randomly cropped."""

    def __init__(self, sources: Sequence[CaptionSource], tokenizer, image_size: int, augment: bool = True) -> None:
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [s.n for s in self.sources])
        self.tokenizer, self.image_size, self.augment = tokenizer, image_size, augment

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        source = self.sources[k]
        try:
            img, caption = source.get(i - int(self.offsets[k]))
        except ImageDecodeError as exc:
            raise DataError(f"{source.name}: {exc}") from exc
        if self.augment:
            img = _random_crop(img, np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)))))
        pixels = torch.from_numpy(to_model_pixels(img, self.image_size))
        return pixels, self.tokenizer([caption])[0]


class TwoViews(Dataset):
    """Image-only data for the self-supervised (SimCLR / SLIP) term: two augmented views per image.

    The views differ by flips, quarter turns and a small shift only. Defects are small and local
    and often differ from good parts by brightness alone, so the usual SimCLR augmentations
    (aggressive crops, colour jitter) would teach the features to ignore exactly what inspection
    needs; these keep the whole part and its grey levels (measured: the strong set lowered the
    ELPV few-shot accuracy of the features below a random initialisation).
    """

    def __init__(self, sources: Sequence[CaptionSource], image_size: int) -> None:
        from torchvision.transforms import v2

        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [s.n for s in self.sources])
        self.image_size = image_size
        self.augment = v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                v2.RandomChoice([v2.RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]),
                v2.RandomAffine(degrees=0, translate=(0.04, 0.04)),
            ]
        )

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        img, _ = self.sources[k].get(i - int(self.offsets[k]))
        base = torch.from_numpy(to_model_pixels(img, self.image_size)).permute(2, 0, 1)
        return tuple(self.augment(base).permute(1, 2, 0).contiguous() for _ in range(2))


def _random_crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop of 70-100% of the area (no flips: captions name locations like top-left)."""
    w, h = img.size
    scale = rng.uniform(0.7, 1.0)
    cw, ch = max(8, int(w * np.sqrt(scale))), max(8, int(h * np.sqrt(scale)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x0, y0, x0 + cw, y0 + ch))
