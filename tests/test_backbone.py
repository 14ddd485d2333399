"""Backbones: built-in configs, checkpoints plain open_clip can load, clear failures."""

from __future__ import annotations

import time

import open_clip
import pytest
import torch

from adapt.core.backbone import create_backbone, save_checkpoint
from adapt.errors import BackboneError

pytestmark = pytest.mark.unit


def test_builtin_architectures_are_registered_with_open_clip_when_asked_not_on_import():
    import subprocess
    import sys

    code = (
        "import open_clip, adapt.core.backbone as b\n"
        "assert 'adapt-tiny' not in open_clip.list_models(), 'registered on import'\n"
        "b.register_builtin_configs(); b.register_builtin_configs()\n"
        "assert {'adapt-tiny', 'adapt-small', 'adapt-effnet-lite0'} <= set(open_clip.list_models())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_random_backbone_carries_its_preprocessing(tiny_backbone):
    b = tiny_backbone
    assert b.image_size == 32 and len(b.mean) == 3 and b.weights_id.startswith("random-init:")
    tokens = b.tokenizer(["a photo of a crack"])
    assert tokens.shape == (1, 32)


def test_checkpoint_loads_in_plain_open_clip(tmp_path, tiny_backbone):
    weights = save_checkpoint(tiny_backbone.model, "adapt-tiny", tmp_path / "ckpt")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = tiny_backbone.model.encode_image(x)
    # 1) the config shipped beside the weights + pretrained=file
    open_clip.add_model_config(tmp_path / "ckpt" / "adapt-tiny.json")
    model, _, preprocess = open_clip.create_model_and_transforms("adapt-tiny", pretrained=str(weights))
    # 2) open_clip's local-dir schema, no registration at all
    model2, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'ckpt'}")
    with torch.no_grad():
        assert torch.allclose(model.eval().encode_image(x), expected, atol=1e-6)
        assert torch.allclose(model2.eval().encode_image(x), expected, atol=1e-6)
    # 3) and adapt itself, from the file and from the folder
    again = create_backbone("adapt-tiny", str(weights))
    assert again.weights_id == create_backbone("adapt-tiny", str(tmp_path / "ckpt")).weights_id


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        create_backbone("adapt-tiny", str(tmp_path / "nope.bin"))


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(BackboneError, match="unknown architecture 'ViT-Q-99'"):
        create_backbone("ViT-Q-99", "none")


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(BackboneError, match="neither a file nor a known open_clip tag"):
        create_backbone("ViT-B-32", "laion-made-up")


def test_hub_tag_offline_fails_fast_with_the_fix(monkeypatch):
    import adapt.core.backbone as backbone

    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(backbone, "_hub_reachable", lambda: False)
    before = hf_constants.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(BackboneError, match="--pretrained /path/to/open_clip_pytorch_model.bin"):
        create_backbone("ViT-B-32", "openai")
    assert time.monotonic() - start < 15
    assert hf_constants.HF_HUB_OFFLINE == before  # offline only for that call, not for the rest of the process
