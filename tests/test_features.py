"""Frozen features come from ONNX Runtime on the cached encoder graph: the numbers torch gives, any
dihedral view of the images, the same on-disk cache keys, and images decoded in order by a thread pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adapt.errors import DataError


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from conftest import write_brightness_folder

    from adapt.data import load_dataset

    data = load_dataset(str(write_brightness_folder(tmp_path_factory.mktemp("parts"), per_class=5)), test_fraction=0.3)
    return data.train


def _torch_features(backbone, images, spec, pixels=None):
    """What the torch encoder gives (the reference ``cached_features`` must match)."""
    from adapt.core.classifier import PixelNormalizer
    from adapt.core.encoders import ImageEncoder
    from adapt.core.features import load_pixels

    pixels = load_pixels(images, backbone.image_size, backbone.resize_mode, progress=False) if pixels is None else pixels
    with torch.no_grad():
        feats = ImageEncoder(backbone.model.visual, spec).eval()(PixelNormalizer(backbone.mean, backbone.std)(pixels))
    return torch.nn.functional.normalize(feats, dim=-1)


def _specs():
    from adapt.core.encoders import EMBEDDING, STAGES, EncoderSpec

    return {
        "vit-embedding": ("tiny_backbone", EncoderSpec()),
        "cnn-stages": ("tiny_cnn_backbone", EncoderSpec((STAGES,), (1, 2))),
        "cnn-embedding+stages": ("tiny_cnn_backbone", EncoderSpec((EMBEDDING, STAGES), (1, 2))),
        "cnn-4-test-time-views": ("tiny_cnn_backbone", EncoderSpec((STAGES,), (1, 2), views=4)),
    }


@pytest.mark.integration
@pytest.mark.parametrize("case", list(_specs()))
def test_onnx_features_are_the_torch_features(case, parts, request):
    from adapt.core.features import cached_features

    fixture, spec = _specs()[case]
    backbone = request.getfixturevalue(fixture)
    got = cached_features(backbone, parts, spec, progress=False, use_cache=False, batch_size=4)  # several batches
    expected = _torch_features(backbone, parts, spec)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert float((got - expected).abs().max()) < 1e-4


@pytest.mark.integration
@pytest.mark.parametrize("view", [1, 2, 5, 7])
def test_a_view_is_the_features_of_the_turned_and_mirrored_images(view, parts, tiny_cnn_backbone):
    from adapt.core.encoders import STAGES, EncoderSpec
    from adapt.core.features import cached_features, load_pixels

    b, spec = tiny_cnn_backbone, EncoderSpec((STAGES,), (1, 2))
    pixels = load_pixels(parts, b.image_size, b.resize_mode, progress=False).numpy()
    turned = np.rot90(pixels, view // 2, axes=(1, 2))  # numpy's own dihedral group, as a user would write it
    turned = np.ascontiguousarray(turned[:, :, ::-1] if view % 2 else turned)
    got = cached_features(b, parts, spec, view=view, progress=False)
    assert float((got - _torch_features(b, parts, spec, torch.from_numpy(turned))).abs().max()) < 1e-4
    assert float((got - cached_features(b, parts, spec, progress=False)).abs().max()) > 1e-3  # not the plain images
    with pytest.raises(ValueError, match="0-7"):
        cached_features(b, parts, spec, view=8)


@pytest.mark.integration
def test_several_views_decode_each_image_once_and_equal_the_single_views(parts, tiny_cnn_backbone, monkeypatch):
    from adapt.core import decoding
    from adapt.core.encoders import STAGES, EncoderSpec
    from adapt.core.features import cached_features, cached_view_features

    b, spec = tiny_cnn_backbone, EncoderSpec((STAGES,), (1, 2))
    decoded = []
    real = decoding.model_pixels
    monkeypatch.setattr(decoding, "model_pixels", lambda images, i, *a: decoded.append(i) or real(images, i, *a))
    together = cached_view_features(b, parts, spec, views=(0, 3, 6), progress=False, use_cache=False, batch_size=3)
    assert sorted(decoded) == list(range(len(parts)))  # once each, for all three views
    for v, got in zip((0, 3, 6), together, strict=True):
        assert float((got - cached_features(b, parts, spec, view=v, progress=False, use_cache=False)).abs().max()) < 1e-6


@pytest.mark.unit
def test_view_0_keeps_the_feature_cache_keys_of_before_views_existed():
    from adapt.core.features import _cache_key
    from adapt.data.images import ImageSet

    images = ImageSet(("a.png", "b.png"), np.array([0, 1]), ("good", "bad"), root="synthetic:0:32", loader=None)
    args = ("w1", "embedding:", 32, "shortest", (0.5,) * 3, (0.25,) * 3, images)
    assert _cache_key(*args) == _cache_key(*args, view=0) == "7221680d1f8ce3a0e7adceda"  # the key of the code before
    assert len({_cache_key(*args, view=v) for v in range(8)}) == 8


@pytest.mark.integration
def test_features_are_cached_on_disk_and_reused(parts, tiny_backbone, monkeypatch):
    from adapt.core import features

    first = features.cached_features(tiny_backbone, parts, progress=False)
    monkeypatch.setattr(features, "onnx_features", lambda *a, **k: pytest.fail("recomputed a cached feature set"))
    assert torch.equal(features.cached_features(tiny_backbone, parts, progress=False), first)


@pytest.mark.unit
def test_pixel_batches_keep_the_order_and_stop_at_an_image_that_does_not_decode(parts, tmp_path):
    from adapt.core.decoding import model_pixels, pixel_batches

    batches = list(pixel_batches(parts, 24, batch_size=3, workers=3))
    assert len(parts) == 7 and [len(b) for b in batches] == [3, 3, 1]
    expected = np.stack([model_pixels(parts, i, 24) for i in range(len(parts))])
    np.testing.assert_array_equal(np.concatenate(batches), expected)
    assert next(pixel_batches(parts, 24, batch_size=4)).shape == (4, 24, 24, 3)  # stopping early is fine
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    keys = tuple(str(Path(parts.root) / k) for k in parts.keys[:4]) + (str(broken),)
    bad = type(parts)(keys, np.zeros(5, np.int64), parts.classes, root="")
    with pytest.raises(DataError):
        list(pixel_batches(bad, 24, batch_size=2))


@pytest.mark.integration
def test_the_torch_fallback_gives_the_same_features(parts, tiny_cnn_backbone):
    """``cached_features`` keeps torch for a GPU that ONNX Runtime cannot use; both agree."""
    from adapt.core.encoders import STAGES, EncoderSpec, ImageEncoder
    from adapt.core.features import onnx_features, torch_features

    b = tiny_cnn_backbone
    encoder = ImageEncoder(b.model.visual, EncoderSpec((STAGES,), (1, 2)))
    args = dict(image_size=b.image_size, mean=b.mean, std=b.std, views=(0, 3), batch_size=4, progress=False)
    for got, expected in zip(onnx_features(encoder, parts, **args), torch_features(encoder, parts, **args), strict=True):
        assert float((got - expected).abs().max()) < 1e-4
