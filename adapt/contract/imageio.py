"""Image decoding and resizing shared by training, export and serving.

This module imports only NumPy and Pillow, so the gRPC service can use it without torch.
Every path that turns a file or an encoded image into model input goes through
``to_model_pixels``; the exported ONNX graph takes its output (uint8, ``H x W x 3``) and does
the rest (scaling and normalisation) inside the graph.
"""

from __future__ import annotations

import io
import logging
from enum import Enum
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Refuse decompression bombs loudly (an error naming the image) instead of letting Pillow warn and go
# on; checked on the header before any pixel is decoded, without changing Pillow's process-wide limit.
MAX_IMAGE_PIXELS = 64_000_000


class ResizeMode(str, Enum):
    """How an image of any size becomes the model's square input."""

    SHORTEST = "shortest"  # scale the shorter side to the input size, then centre-crop
    SQUASH = "squash"  # scale both sides to the input size (aspect ratio not kept)


class ImageDecodeError(ValueError):
    """The bytes or file are not an image this product can read."""


def decode_image(data: bytes | bytearray | memoryview) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, BMP, TIFF, ...) to an RGB ``PIL.Image``."""
    return _rgb(_decode(data))


def read_image(path: str | Path) -> Image.Image:
    """Read an image file to RGB; a missing or unreadable file raises ``ImageDecodeError`` naming it."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            _check_size(img, str(path))
            img.load()
            return _rgb(_normalise(img))
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{path}: no such file") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"{path}: not a readable image ({exc})") from exc


def _decode(data: bytes | bytearray | memoryview) -> Image.Image:
    """Decoded bytes as an 8-bit ``L`` (grayscale) or ``RGB`` image."""
    if not data:
        raise ImageDecodeError("empty image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_size(img, "image")
            img.load()
            return _normalise(img)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc


def _check_size(img: Image.Image, where: str) -> None:
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(f"{where}: {width}x{height} pixels is more than the {MAX_IMAGE_PIXELS:,} this product reads")


def _normalise(img: Image.Image) -> Image.Image:
    """Upright (EXIF orientation), 8 bits, and ``L`` or ``RGB``: grayscale stays one channel until
    after resizing, which gives the same pixels as converting first at a third of the work."""
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # exif_transpose would copy even when upright
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float grayscale (common for industrial cameras): stretch to 8 bits.
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), mode="L")
    return img if img.mode in ("L", "RGB") else img.convert("RGB")


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def resize_image(img: Image.Image, size: int, mode: ResizeMode | str = ResizeMode.SHORTEST) -> Image.Image:
    """Resize an ``L`` or ``RGB`` image to ``size x size`` by the given rule, with bicubic filtering."""
    mode = ResizeMode(mode)
    if mode is ResizeMode.SQUASH:
        return img.resize((size, size), Image.Resampling.BICUBIC)
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_model_pixels(img: Image.Image, size: int, mode: ResizeMode | str = ResizeMode.SHORTEST) -> np.ndarray:
    """The model's input for one image: ``uint8`` array of shape ``(size, size, 3)``."""
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return np.array(_rgb(resize_image(img, size, mode)), dtype=np.uint8)  # a writable copy


def bytes_to_model_pixels(data: bytes, size: int, mode: ResizeMode | str = ResizeMode.SHORTEST) -> np.ndarray:
    """Decode encoded bytes and resize them to the model input in one call (the server's path)."""
    return to_model_pixels(_decode(data), size, mode)
