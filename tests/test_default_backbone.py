"""The default backbone: built on first use (with the default preset), then reused from the cache."""

from __future__ import annotations

import logging

import pytest

import adapt.pretrain as pretrain
from adapt.backbone import create_backbone


@pytest.mark.integration
def test_default_backbone_is_built_once_then_reused(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ADAPT_DEFAULT_BACKBONE_DIR", str(tmp_path / "default"))
    small = pretrain.PretrainConfig(data=["synthetic"], model="adapt-tiny", batch_size=8, synthetic_samples=16, num_workers=0,
                                    accelerator="cpu", progress=False, zero_shot_per_class=1)
    monkeypatch.setitem(pretrain.PRESETS, "default", small)
    calls = []
    real = pretrain.run_pretrain
    monkeypatch.setattr(pretrain, "run_pretrain", lambda cfg, *a, **k: calls.append(cfg) or real(cfg, *a, **k))

    with caplog.at_level(logging.WARNING):
        first = create_backbone("adapt-tiny", "default")
    assert "pretraining it now" in caplog.text and len(calls) == 1
    assert (tmp_path / "default" / "open_clip_pytorch_model.bin").is_file()
    second = create_backbone("adapt-tiny", "default")
    assert len(calls) == 1  # reused, not rebuilt
    assert first.weights_id == second.weights_id and first.weights_id != "random-init"
