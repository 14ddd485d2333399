"""Decoding and resizing: the one preprocessing path shared by training and serving."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import ExifTags, Image

from adapt.contract.imageio import ImageDecodeError, bytes_to_model_pixels, decode_image, read_image, resize_image, to_model_pixels

pytestmark = pytest.mark.unit


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF"])
def test_every_supported_format_decodes_to_rgb(fmt):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    out = decode_image(_encode(img, fmt))
    assert out.mode == "RGB" and out.size == (30, 20)


def test_grayscale_and_16bit_become_rgb():
    gray = Image.fromarray(np.full((10, 10), 77, dtype=np.uint8), mode="L")
    assert np.asarray(decode_image(_encode(gray, "PNG")))[0, 0].tolist() == [77, 77, 77]
    deep = Image.fromarray(np.linspace(0, 65535, 100, dtype=np.uint16).reshape(10, 10))
    arr = np.asarray(decode_image(_encode(deep, "PNG")))
    assert arr.shape == (10, 10, 3) and arr.min() == 0 and arr.max() == 255


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_garbage_is_a_decode_error(data):
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageDecodeError, match="bad.jpg"):
        read_image(bad)


def test_an_image_too_large_to_decode_safely_is_refused_by_name(tmp_path):
    huge = Image.new("1", (8001, 8001))  # 64.0 M pixels, a few kB as PNG: a decompression bomb in miniature
    huge.save(tmp_path / "bomb.png")
    with pytest.raises(ImageDecodeError, match=r"bomb.png: 8001x8001 pixels is more than"):
        read_image(tmp_path / "bomb.png")
    with pytest.raises(ImageDecodeError, match="8001x8001 pixels"):
        decode_image((tmp_path / "bomb.png").read_bytes())
    assert Image.MAX_IMAGE_PIXELS != 64_000_000  # Pillow's own, process-wide limit is left as it is


def test_shortest_side_resize_then_centre_crop():
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, 20:60] = 255  # the centre 40x40 is white, the sides black
    px = to_model_pixels(Image.fromarray(arr), 20)
    assert px.shape == (20, 20, 3) and px.dtype == np.uint8
    assert px[:, 2:-2].min() > 200  # the crop kept the white centre


def test_squash_keeps_the_whole_image():
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, :40] = 255
    px = to_model_pixels(Image.fromarray(arr), 20, "squash")
    assert px[:, :8].min() > 200 and px[:, 12:].max() < 50


def test_bytes_path_equals_file_path(tmp_path):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (33, 47, 3), dtype=np.uint8))
    img.save(tmp_path / "x.png")
    a = bytes_to_model_pixels((tmp_path / "x.png").read_bytes(), 16)
    b = to_model_pixels(read_image(tmp_path / "x.png"), 16)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("mode", ["shortest", "squash"])
def test_grayscale_resized_before_rgb_gives_the_same_pixels(mode):
    """The fast path keeps grayscale one channel until after resizing; the pixels must not change."""
    arr = np.random.default_rng(0).integers(0, 256, (53, 37), dtype=np.uint8)
    data = _encode(Image.fromarray(arr), "PNG")
    rgb_first = np.array(resize_image(Image.fromarray(arr).convert("RGB"), 24, mode))
    assert np.array_equal(bytes_to_model_pixels(data, 24, mode), rgb_first)
    assert np.array_equal(to_model_pixels(Image.fromarray(arr), 24, mode), rgb_first)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white on the left
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored rotated: display needs a 90 degree turn
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", exif=exif, quality=95)
    out = decode_image(buffer.getvalue())
    assert out.size == (20, 40)
    px = np.asarray(out)
    assert px[:8, :, 0].mean() > 200 and px[-8:, :, 0].mean() < 50  # the left edge is now the top


@pytest.mark.unit
def test_feature_cache_rereads_an_image_edited_in_place(tmp_path, tiny_backbone):
    import os

    import torch

    from adapt.data import load_dataset
    from adapt.core.features import cached_features
    from conftest import write_brightness_folder

    data = load_dataset(write_brightness_folder(tmp_path / "parts", per_class=4))
    first = cached_features(tiny_backbone, data.train, progress=False)
    assert torch.equal(cached_features(tiny_backbone, data.train, progress=False), first)  # served from the cache
    path = tmp_path / "parts" / data.train.keys[0]
    Image.new("RGB", (40, 48), (255, 0, 0)).save(path)  # same name, new content
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later mtime even on coarse clocks
    again = cached_features(tiny_backbone, data.train, progress=False)
    assert not torch.allclose(again[0], first[0]) and torch.allclose(again[1:], first[1:])
