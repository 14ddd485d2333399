"""Shared fixtures: an isolated cache, tiny image folders, a tiny random backbone."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))  # helpers such as serving_fixtures


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Feature caches and default backbones of the tests never touch the user's cache."""
    old = os.environ.get("ADAPT_CACHE_DIR")
    os.environ["ADAPT_CACHE_DIR"] = str(tmp_path_factory.mktemp("adapt-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield
    if old is None:
        os.environ.pop("ADAPT_CACHE_DIR", None)
    else:
        os.environ["ADAPT_CACHE_DIR"] = old


def write_brightness_folder(root: Path, per_class: int = 12, size: int = 40, seed: int = 0, classes=("dark", "bright")) -> Path:
    """Noisy images whose class is their brightness: any working pipeline separates them."""
    rng = np.random.default_rng(seed)
    levels = np.linspace(50, 205, len(classes))
    for label, level in zip(classes, levels):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(rng.normal(level, 25, (size, size + 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / label / f"{label}_{i:03d}.png")
    return root


@pytest.fixture()
def brightness_folder(tmp_path) -> Path:
    return write_brightness_folder(tmp_path / "parts")


@pytest.fixture(scope="session")
def tiny_backbone():
    import torch

    from adapt.core.backbone import create_backbone

    torch.manual_seed(0)
    return create_backbone("adapt-tiny", "none")


TINY_CNN_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"timm_model_name": "tf_efficientnet_lite0", "timm_model_pretrained": False, "timm_pool": "avg",
                   "timm_proj": "linear", "image_size": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_cnn_arch(tmp_path_factory) -> str:
    """``test-effnet``: the real ImageNet EfficientNet-Lite0 tower at 32 px with a one-layer text tower."""
    import json

    import open_clip

    from adapt.core.backbone import register_builtin_configs

    register_builtin_configs()  # first, so this test architecture is registered after them

    path = tmp_path_factory.mktemp("configs") / "test-effnet.json"
    path.write_text(json.dumps(TINY_CNN_CONFIG))
    open_clip.add_model_config(path)
    return "test-effnet"


@pytest.fixture(scope="session")
def tiny_cnn_backbone(tiny_cnn_arch):
    import torch

    from adapt.core.backbone import create_backbone

    torch.manual_seed(0)
    return create_backbone(tiny_cnn_arch, "imagenet")


REPO_ROOT = Path(__file__).resolve().parent.parent
# What `adapt` writes into its working directory by default; the tests must write none of it here.
DEFAULT_OUTPUTS = ("mlflow.db", "mlruns", "mlartifacts", "runs", "feedback", "lightning_logs")


def _footprint(root: Path) -> dict[str, tuple]:
    """Each default output present in ``root``: its mtime and (folders) entries or (files) size."""
    found = {}
    for name in DEFAULT_OUTPUTS:
        path = root / name
        if path.exists():
            st = path.stat()
            found[name] = (st.st_mtime_ns, sorted(p.name for p in path.iterdir()) if path.is_dir() else st.st_size)
    return found


@pytest.fixture(scope="session", autouse=True)
def _hermetic_outputs(tmp_path_factory):
    """MLflow runs of the tests land in a store under pytest's tmp dirs (subprocesses inherit it),
    and the session fails if the checkout gained or changed mlflow.db, mlruns/, runs/, ..."""
    store = tmp_path_factory.mktemp("mlflow-store")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    before = _footprint(REPO_ROOT)
    yield
    patch.undo()
    after = _footprint(REPO_ROOT)
    changed = sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))
    assert not changed, f"tests wrote into the checkout {REPO_ROOT}: {', '.join(changed)} (use tmp_path and cwd=tmp_path)"
