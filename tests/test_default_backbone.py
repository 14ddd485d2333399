"""The default backbones: built once per recipe (LiT for EfficientNet towers, the pretraining
preset for the ViTs), only when asked and saying so, cached under a key that names the recipe,
then reused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import adapt.pipelines.default_backbone as default_backbone
import adapt.pipelines.pretrain as pretrain
from adapt.core.backbone import create_backbone
from adapt.pipelines.default_backbone import load_backbone


@pytest.mark.integration
def test_vit_default_backbone_is_built_once_when_asked_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_DEFAULT_BACKBONE_DIR", str(tmp_path / "default"))
    small = pretrain.PretrainConfig(data=["synthetic"], model="adapt-tiny", batch_size=8, synthetic_samples=16, num_workers=0,
                                    accelerator="cpu", progress=False, zero_shot_per_class=1)
    monkeypatch.setitem(pretrain.PRESETS, "default", small)
    calls = []
    real = pretrain.run_pretrain
    monkeypatch.setattr(pretrain, "run_pretrain", lambda cfg, *a, **k: calls.append(cfg) or real(cfg, *a, **k))

    with pytest.raises(default_backbone.DefaultBackboneMissing, match="not built yet"):
        load_backbone("adapt-tiny", "default")  # resolving alone never trains
    assert not calls
    told = []
    with default_backbone.building_announced(told.append):
        first = load_backbone("adapt-tiny", "default")
    assert len(told) == 1 and "building it now" in told[0] and len(calls) == 1
    assert (tmp_path / "default" / "open_clip_pytorch_model.bin").is_file()
    second = load_backbone("adapt-tiny", "default")
    assert len(calls) == 1  # reused, not rebuilt
    assert first.weights_id == second.weights_id and first.weights_id != "random-init"


@pytest.mark.unit
def test_different_recipes_never_share_a_cache_entry(tiny_cnn_arch, monkeypatch, tmp_path):
    monkeypatch.delenv("ADAPT_DEFAULT_BACKBONE_DIR", raising=False)
    base = default_backbone.LitRecipe(tiny_cnn_arch)
    other = default_backbone.LitRecipe(tiny_cnn_arch, synthetic_samples=base.synthetic_samples + 1)
    assert default_backbone.recipe_hash(tiny_cnn_arch, base) != default_backbone.recipe_hash(tiny_cnn_arch, other)
    assert default_backbone.recipe_hash(tiny_cnn_arch, base) == default_backbone.recipe_hash(tiny_cnn_arch, base)
    assert default_backbone.recipe_hash("adapt-tiny") != default_backbone.recipe_hash("adapt-small")
    folder = default_backbone.default_dir(tiny_cnn_arch)
    assert folder.name == f"{tiny_cnn_arch}-default-{default_backbone.recipe_hash(tiny_cnn_arch)}"
    monkeypatch.setattr(default_backbone, "recipe_for", lambda arch: other)  # a changed recipe -> another folder
    assert default_backbone.default_dir(tiny_cnn_arch) != folder


@pytest.mark.integration
def test_lit_default_locks_the_imagenet_tower_trains_the_text_tower_and_loads_in_plain_open_clip(tiny_cnn_arch, tmp_path, monkeypatch, caplog):
    import open_clip
    import torch

    from adapt.core import imagenet

    recipe = default_backbone.LitRecipe(tiny_cnn_arch, synthetic_samples=48, elpv_samples=16, epochs=3, batch_size=16)
    monkeypatch.setattr(default_backbone, "recipe_for", lambda arch: recipe)
    monkeypatch.setenv("ADAPT_DEFAULT_BACKBONE_DIR", str(tmp_path / "lit"))
    with caplog.at_level(logging.INFO):
        default_backbone.build_default(tiny_cnn_arch)
    assert "initialized randomly" not in caplog.text  # the ImageNet tower is loaded right after creation
    built = load_backbone(tiny_cnn_arch, "default")
    assert Path(built.pretrained) == tmp_path / "lit" / "open_clip_pytorch_model.bin"

    reference = imagenet.load_imagenet_trunk("lite0", check_parity=False).state_dict()
    trunk = built.model.visual.trunk.state_dict()
    assert all(torch.equal(trunk[k], reference[k]) for k in trunk)  # locked: ImageNet weights and statistics
    untrained = create_backbone(tiny_cnn_arch, "imagenet")
    assert not torch.equal(built.model.text_projection, untrained.model.text_projection)  # the text tower trained

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'lit'}")
    norm = preprocess.transforms[-1]
    assert list(norm.mean) == pytest.approx([127 / 255] * 3) and list(norm.std) == pytest.approx([128 / 255] * 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval().encode_image(x), built.model.encode_image(x), atol=1e-5)
    assert (tmp_path / "lit" / "pretrain_metrics.json").is_file()
