"""Image loading for torch and frozen-feature extraction with an on-disk cache.

Frozen methods (zero-shot, linear probe, Tip-Adapter, CoOp) only need the image features of
the backbone, so they are computed once per (weights, preprocessing, image) and cached under
the user cache dir; every later run on the same data reuses them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from adapt.contract.imageio import ImageDecodeError, to_model_pixels
from adapt.core.classifier import PixelNormalizer
from adapt.data.images import ImageSet
from adapt.defaults import cache_dir
from adapt.errors import DataError

logger = logging.getLogger(__name__)


class PixelDataset(Dataset):
    """An ``ImageSet`` as uint8 ``[H, W, 3]`` tensors at the model's input size, with labels."""

    def __init__(self, images: ImageSet, image_size: int, resize_mode: str = "shortest") -> None:
        self.images, self.image_size, self.resize_mode = images, image_size, resize_mode

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            img = self.images.load(i)
        except ImageDecodeError as exc:
            raise DataError(str(exc)) from exc
        pixels = to_model_pixels(img, self.image_size, self.resize_mode)
        return torch.from_numpy(pixels), int(self.images.labels[i])


def load_pixels(images: ImageSet, image_size: int, resize_mode: str = "shortest", progress: bool = True) -> torch.Tensor:
    """All images of a (small) set as one uint8 tensor ``[N, H, W, 3]``."""
    ds = PixelDataset(images, image_size, resize_mode)
    items = [ds[i][0] for i in tqdm(range(len(ds)), desc="loading images", disable=not progress, leave=False)]
    return torch.stack(items) if items else torch.empty(0, image_size, image_size, 3, dtype=torch.uint8)


def _cache_key(weights_id: str, encoder: str, image_size: int, resize_mode: str, mean, std, images: ImageSet) -> str:
    h = hashlib.sha256(f"{weights_id}|{encoder}|{image_size}|{resize_mode}|{tuple(mean)}|{tuple(std)}|{images.root}".encode())
    for key in images.keys:
        h.update(b"\x1e" + key.encode() + b"\x1f" + _file_stamp(images.root, key).encode())
    return h.hexdigest()[:24]


def _file_stamp(root: str, key: str) -> str:
    """Size and modification time of an image file, so an image edited in place is re-read
    (generated images, which have no file, are identified by their key alone)."""
    try:
        st = (Path(root) / key).stat()
    except OSError:
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"


def encode_batches(
    encoder: torch.nn.Module,
    loader: DataLoader,
    *,
    pixels_of: Callable = itemgetter(0),
    mean,
    std,
    device: str | torch.device = "cpu",
    l2_normalize: bool = True,
    channels_last: bool = False,
    progress: bool = True,
    desc: str = "extracting features",
) -> torch.Tensor:
    """The one feature-extraction loop: ``loader``'s batches (``pixels_of(batch)``: uint8 pixels
    ``[n, H, W, 3]``) -> normalised as the encoder expects -> ``encoder`` -> (L2-normalised) float32
    features ``[N, D]`` on the CPU. tqdm wraps the loader itself (not a generator over it): that
    draws from torch's random stream as the code before did, so what trains next gets the same numbers.
    ``channels_last`` runs a CNN in that memory format (faster on CPUs) and puts it back after."""
    normalize = PixelNormalizer(mean, std).to(device)
    encoder = encoder.to(device).eval()
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
    out = []
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
                x = normalize(pixels_of(batch).to(device))
                feats = encoder(x.contiguous(memory_format=torch.channels_last) if channels_last else x).float()
                out.append((F.normalize(feats, dim=-1) if l2_normalize else feats).cpu())
    finally:
        if channels_last:
            encoder.to(memory_format=torch.contiguous_format)
    return torch.cat(out) if out else torch.empty(0, 0)


def encode_images(
    encoder: torch.nn.Module,
    images: ImageSet,
    *,
    image_size: int,
    mean,
    std,
    resize_mode: str = "shortest",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "extracting features",
) -> torch.Tensor:
    """L2-normalised image features ``[N, D]`` (float32, on the CPU); ``encoder`` maps normalised images to features."""
    loader = DataLoader(PixelDataset(images, image_size, resize_mode), batch_size=batch_size, num_workers=num_workers)
    return encode_batches(encoder, loader, mean=mean, std=std, device=device, progress=progress, desc=desc)


def cached_features(backbone, images: ImageSet, spec=None, *, device="cpu", batch_size: int = 64, progress: bool = True,
                    use_cache: bool = True) -> torch.Tensor:
    """``encode_images`` with the backbone's image tower as ``spec`` (an ``EncoderSpec``; default: the
    joint embedding) says, memoised on disk by weights + encoder + images."""
    from adapt.core.encoders import EncoderSpec, ImageEncoder

    spec = spec or EncoderSpec()
    key = _cache_key(backbone.weights_id, spec.key(), backbone.image_size, backbone.resize_mode, backbone.mean, backbone.std, images)
    path = cache_dir() / "features" / f"{key}.pt"
    if use_cache and path.is_file():
        try:
            feats = torch.load(path, weights_only=True)
            if feats.shape[0] == len(images):
                return feats
        except (OSError, RuntimeError) as exc:  # a damaged cache file is recomputed, not fatal
            logger.warning("ignoring unreadable feature cache %s: %s", path, exc)
    feats = encode_images(
        ImageEncoder(backbone.model.visual, spec),
        images,
        image_size=backbone.image_size,
        mean=backbone.mean,
        std=backbone.std,
        resize_mode=backbone.resize_mode,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(feats, tmp)
        tmp.replace(path)
    return feats


def labels_tensor(images: ImageSet) -> torch.Tensor:
    return torch.from_numpy(np.asarray(images.labels, dtype=np.int64))
