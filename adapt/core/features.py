"""Image loading for torch and frozen-feature extraction with an on-disk cache.

Frozen methods (zero-shot, linear probe, Tip-Adapter, CoOp) only need the image features of
the backbone, so they are computed once per (weights, preprocessing, image) and cached under
the user cache dir; every later run on the same data reuses them. They are computed by ONNX
Runtime on the cached encoder graph (``adapt.core.graphs``: the graph the exported model is
composed from, so a retrain exports and checks it once), with images decoded in a thread pool
(``adapt.core.decoding``); several times faster than the torch encoder on a small CPU.
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

from adapt.contract.runtime import RuntimeConfig
from adapt.core.classifier import PixelNormalizer
from adapt.core.decoding import model_pixels, pixel_batches, with_progress
from adapt.core.encoders import DIHEDRAL_VIEWS, PATCHES, EncoderSpec, ImageEncoder, dihedral
from adapt.core.graphs import EncoderGraph, encoder_runner
from adapt.data.images import ImageSet
from adapt.defaults import cache_dir

logger = logging.getLogger(__name__)


class PixelDataset(Dataset):
    """An ``ImageSet`` as uint8 ``[H, W, 3]`` tensors at the model's input size, with labels."""

    def __init__(self, images: ImageSet, image_size: int, resize_mode: str = "shortest") -> None:
        self.images, self.image_size, self.resize_mode = images, image_size, resize_mode

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(model_pixels(self.images, i, self.image_size, self.resize_mode)), int(self.images.labels[i])


def load_pixels(images: ImageSet, image_size: int, resize_mode: str = "shortest", progress: bool = True) -> torch.Tensor:
    """All images of a (small) set as one uint8 tensor ``[N, H, W, 3]`` (decoded in a thread pool)."""
    batches = with_progress(pixel_batches(images, image_size, resize_mode), len(images), 64, "loading images", progress)
    items = [torch.from_numpy(b) for b in batches]
    return torch.cat(items) if items else torch.empty(0, image_size, image_size, 3, dtype=torch.uint8)


def _cache_key(weights_id: str, encoder: str, image_size: int, resize_mode: str, mean, std, images: ImageSet, view: int = 0) -> str:
    viewed = f"|view{view}" if view else ""  # view 0 keeps the keys (and caches) of before views existed
    h = hashlib.sha256(f"{weights_id}|{encoder}{viewed}|{image_size}|{resize_mode}|{tuple(mean)}|{tuple(std)}|{images.root}".encode())
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


def cached_features(backbone, images: ImageSet, spec: EncoderSpec | None = None, *, view: int = 0, device="cpu", batch_size: int = 64,
                    progress: bool = True, use_cache: bool = True) -> torch.Tensor:
    """The features of ``images`` through the backbone's image tower as ``spec`` (an
    ``EncoderSpec``; default: the joint embedding) says, L2-normalised ``[N, D]`` float32 on the
    CPU, memoised on disk by weights + encoder + images. ``view`` (0-7) encodes dihedral view
    ``view`` of every image (``adapt.core.encoders.dihedral`` on the pixels) instead of the image."""
    return cached_view_features(backbone, images, spec, views=(view,), device=device, batch_size=batch_size, progress=progress,
                                use_cache=use_cache)[0]


def cached_view_features(backbone, images: ImageSet, spec: EncoderSpec | None = None, *, views: tuple[int, ...] = (0,), device="cpu",
                         batch_size: int = 64, progress: bool = True, use_cache: bool = True) -> list[torch.Tensor]:
    """``cached_features`` of several dihedral ``views`` of the same images, one ``[N, D]`` tensor per
    view, each memoised on disk under its own key; the views not on disk are computed together, so
    every image is decoded once for all of them."""
    spec = spec or EncoderSpec()
    if any(not 0 <= v < DIHEDRAL_VIEWS for v in views):
        raise ValueError(f"a dihedral view is 0-{DIHEDRAL_VIEWS - 1}, got {list(views)}")
    b = backbone
    paths = {v: cache_dir() / "features" / f"{_cache_key(b.weights_id, spec.key(), b.image_size, b.resize_mode, b.mean, b.std, images, v)}.pt"
             for v in views}
    found = {v: feats for v in views if use_cache and (feats := _load_cached(paths[v], len(images))) is not None}
    todo = tuple(v for v in dict.fromkeys(views) if v not in found)
    if todo:
        encoder = ImageEncoder(b.model.visual, spec)
        args = dict(image_size=b.image_size, mean=b.mean, std=b.std, resize_mode=b.resize_mode, views=todo,
                    batch_size=batch_size, device=device, progress=progress)
        computed = onnx_features(encoder, images, **args) if _onnx_runs_on(device) else torch_features(encoder, images, **args)
        for v, feats in zip(todo, computed):
            found[v] = feats
            if use_cache:
                paths[v].parent.mkdir(parents=True, exist_ok=True)
                tmp = paths[v].with_suffix(f".{os.getpid()}.tmp")
                torch.save(feats, tmp)
                tmp.replace(paths[v])
    return [found[v] for v in views]


def _load_cached(path: Path, n: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        feats = torch.load(path, weights_only=True)
    except (OSError, RuntimeError) as exc:  # a damaged cache file is recomputed, not fatal
        logger.warning("ignoring unreadable feature cache %s: %s", path, exc)
        return None
    return feats if feats.shape[0] == n else None


def onnx_features(encoder: ImageEncoder, images: ImageSet, *, image_size: int, mean, std, resize_mode: str = "shortest",
                  views: tuple[int, ...] = (0,), batch_size: int = 64, device="cpu", progress: bool = True) -> list[torch.Tensor]:
    """``cached_view_features``' computation: the encoder graph of ``encoder`` (cached,
    ``adapt.core.graphs``) in ONNX Runtime over batches decoded in a thread pool, each batch decoded
    once and run as every one of ``views``; one ``[N, D]`` tensor per view."""
    if not len(images):
        return [torch.empty(0, 0) for _ in views]
    providers = ("CPUExecutionProvider",) if torch.device(device).type == "cpu" else ()
    runner = encoder_runner(EncoderGraph(encoder, PixelNormalizer(mean, std)), image_size, mean, std, RuntimeConfig(providers=providers))
    desc = "extracting features" + (f" ({len(views)} views)" if len(views) > 1 else "")
    batches = with_progress(pixel_batches(images, image_size, resize_mode, batch_size), len(images), batch_size, desc, progress)
    out: list[list[np.ndarray]] = [[] for _ in views]
    for batch in batches:
        for per_view, v in zip(out, views):
            per_view.append(runner.predict(_viewed(batch, v)))
    # the torch loop (``encode_batches``) L2-normalises every feature vector, a patch map's per position
    feats = [torch.from_numpy(np.concatenate(f)) for f in out]
    return [F.normalize(f, dim=-1) for f in feats] if encoder.spec.parts == (PATCHES,) else feats


def torch_features(encoder: ImageEncoder, images: ImageSet, *, image_size: int, mean, std, resize_mode: str = "shortest",
                   views: tuple[int, ...] = (0,), batch_size: int = 64, device="cpu", progress: bool = True) -> list[torch.Tensor]:
    """The same features from the torch encoder (on a GPU that ONNX Runtime cannot use); one pass
    over the images per view."""
    loader = DataLoader(PixelDataset(images, image_size, resize_mode), batch_size=batch_size)
    return [encode_batches(encoder, loader, pixels_of=lambda batch, v=v: dihedral(batch[0], v, dims=(1, 2)), mean=mean, std=std,
                           device=device, progress=progress) for v in views]


def _viewed(pixels: np.ndarray, view: int) -> np.ndarray:
    return np.ascontiguousarray(dihedral(torch.from_numpy(pixels), view, dims=(1, 2)).numpy()) if view else pixels


def _onnx_runs_on(device) -> bool:
    """Whether ONNX Runtime can run on ``device``: the CPU always, a GPU with onnxruntime's CUDA provider."""
    if torch.device(device).type == "cpu":
        return True
    import onnxruntime as ort

    return torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()


def labels_tensor(images: ImageSet) -> torch.Tensor:
    return torch.from_numpy(np.asarray(images.labels, dtype=np.int64))
