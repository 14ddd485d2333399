"""Contrastive backbones: create or load any open_clip architecture, and save checkpoints.

``create_backbone`` is the one factory: it returns the model together with its tokenizer and
the preprocessing that matches it (input size, mean/std, resize rule), so they cannot drift
apart. ``pretrained`` may be an open_clip tag (needs network, fails fast offline), a local
checkpoint file or open_clip folder, ``"imagenet"`` (architectures with an EfficientNet-Lite tower:
its ImageNet weights, text tower untrained), or ``None``/``"none"`` for random initialisation. The product's own pretrained backbone
(``--pretrained default``) is built by a pipeline: ``adapt.pipelines.default_backbone.load_backbone``.

Architectures whose image tower is an ImageNet EfficientNet-Lite (``adapt-effnet-lite0``/``2``)
get that network's normalisation in their preprocessing, and ``feature_stages``: the trunk
stages whose pooled maps the frozen-feature methods use (``adapt.core.encoders``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch

from adapt.core import imagenet
from adapt.contract.digest import file_sha256
from adapt.core.encoders import EMBEDDING, STAGES, EncoderSpec, spec_for
from adapt.defaults import BUILTIN_ARCHS, DEFAULT_ARCH
from adapt.errors import BackboneError, first_line

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"  # adapt-tiny, adapt-small, adapt-effnet-lite0, ...

CHECKPOINT_NAME = "open_clip_pytorch_model.bin"
OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
HUB_PROBE_TIMEOUT_S = 3.0
# Pooled EfficientNet stages used by the frozen-feature methods (strides 8, 16, 32): chosen on a
# dev split of the ELPV train pool, experiments/backbone/feature_probe.md.
CNN_FEATURE_STAGES = (2, 3, 4)


@dataclass
class Backbone:
    """An open_clip model with everything that must travel with it."""

    model: torch.nn.Module
    arch: str
    pretrained: str  # what the user asked for ("none", a tag, a path, "default")
    weights_id: str  # content hash of the weights file, or the tag; part of run fingerprints
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = "shortest"
    model_cfg: dict = field(default_factory=dict)
    feature_stages: tuple[int, ...] = ()  # trunk stages for pooled mid-level features (CNN towers)

    def encoder_spec(self, use: str) -> EncoderSpec:
        """What a method encodes images into: ``text`` (the joint embedding), ``probe`` (the best
        frozen features for a head trained on them), ``cache`` (both: Tip-Adapter)."""
        parts = {"text": (EMBEDDING,), "probe": (STAGES,), "cache": (EMBEDDING, STAGES)}[use]
        return spec_for(self.model.visual, parts, self.feature_stages)

    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg.get("embed_dim", 0)) or int(self.model.text_projection.shape[1])

    def describe(self) -> str:
        return f"{self.arch}@{self.pretrained}"


def state_dict_hash(model: torch.nn.Module) -> str:
    """Content hash of a model's weights (identifies random initialisations for caches)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@functools.cache
def register_builtin_configs() -> None:
    """Make this product's architectures (``MODEL_CONFIG_DIR``) known to open_clip, once per
    process. Called by everything here that names an architecture; importing changes nothing."""
    open_clip.add_model_config(MODEL_CONFIG_DIR)


def model_config(arch: str) -> dict | None:
    """open_clip's config of ``arch`` (built-ins registered first), or None when unknown."""
    register_builtin_configs()
    return open_clip.get_model_config(arch)


def create_backbone(
    arch: str = DEFAULT_ARCH,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> Backbone:
    """Create ``arch`` with weights from ``pretrained``; see the module docstring for the forms."""
    register_builtin_configs()
    pretrained = (pretrained or "none").strip()
    if pretrained.lower() == "default":
        raise BackboneError(
            "'default' is the product's own backbone, built by a pretraining run: open it with "
            "adapt.pipelines.default_backbone.load_backbone (the CLI's --pretrained default does)"
        )
    path = Path(pretrained).expanduser()
    cfg = tokenizer = None  # from the registered architecture, unless a checkpoint folder brings its own
    if pretrained.lower() == "none":
        model = _create(arch, None, device, precision)
        weights_id = f"random-init:{state_dict_hash(model)}"
    elif pretrained.lower() == "imagenet":
        with weights_loaded_after_creation():
            model = _create(arch, None, device, precision)
        net = load_imagenet_tower(model, arch)
        weights_id = f"imagenet-{net}:{imagenet.weights_digest(net)}+text:{state_dict_hash(model.transformer)}"
    elif path.is_dir() or _in_checkpoint_folder(path):
        folder = path if path.is_dir() else path.parent
        model, arch, weights_id, cfg = _create_from_dir(folder, arch, device, precision)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    elif path.is_file():
        own = path.parent / f"{arch}.json"  # a config shipped beside the weights wins over a built-in
        if own.is_file():
            open_clip.add_model_config(own)
        model, weights_id = _create(arch, str(path), device, precision), file_sha256(path)[:16]
    elif _looks_like_path(pretrained):
        raise BackboneError(f"pretrained weights file not found: {pretrained}")
    else:
        model, weights_id = _create_from_tag(arch, pretrained, device, precision), f"tag:{pretrained}"
    model.eval()
    pp = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
    size = pp.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    if cfg is None:
        cfg, tokenizer = open_clip.get_model_config(arch) or {}, open_clip.get_tokenizer(arch)
    cnn = imagenet_net(cfg) is not None
    return Backbone(
        model=model,
        arch=arch,
        pretrained=pretrained,
        weights_id=weights_id,
        tokenizer=tokenizer,
        image_size=int(size),
        mean=tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)),
        resize_mode=pp.get("resize_mode", "shortest"),
        model_cfg=cfg,
        feature_stages=CNN_FEATURE_STAGES if cnn else (),
    )


def imagenet_net(model_cfg: dict | None) -> str | None:
    """``lite0``/``lite2`` when the config's image tower is an EfficientNet-Lite with shipped weights."""
    return imagenet.net_for(((model_cfg or {}).get("vision_cfg") or {}).get("timm_model_name"))


def load_imagenet_tower(model: torch.nn.Module, arch: str) -> str:
    """Put the ImageNet EfficientNet-Lite weights into ``model.visual.trunk``; returns the net name."""
    net = imagenet_net(model_config(arch))
    if net is None:
        raise BackboneError(f"--pretrained imagenet needs an EfficientNet-Lite image tower (adapt-effnet-lite0/2), not {arch}")
    full = imagenet.load_imagenet_trunk(net).state_dict()
    trunk = model.visual.trunk
    trunk.load_state_dict({k: v for k, v in full.items() if k in trunk.state_dict()}, strict=True)
    return net


class _RandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()


@contextmanager
def weights_loaded_after_creation() -> Iterator[None]:
    """open_clip warns (on the root logger) that a model it creates without a checkpoint is
    initialised randomly; inside this block that one line is dropped, for callers that load the
    weights themselves right after (the ImageNet towers). Other messages pass."""
    notice = _RandomInitNotice()
    root = logging.getLogger()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def _looks_like_path(text: str) -> bool:
    return os.sep in text or text.startswith(".") or text.endswith((".bin", ".pt", ".pth", ".safetensors", ".npz"))


def _create(arch: str, checkpoint: str | None, device, precision) -> torch.nn.Module:
    if arch not in open_clip.list_models():
        raise BackboneError(
            f"unknown architecture '{arch}'; pass a config beside the checkpoint or one of "
            f"{', '.join(BUILTIN_ARCHS)}, ViT-B-16, ... (`python -c 'import open_clip; print(open_clip.list_models())'`)"
        )
    net = imagenet_net(open_clip.get_model_config(arch))
    force_pp = {"mean": imagenet.MEAN, "std": imagenet.STD} if net else None  # the CNN's own normalisation
    try:
        return open_clip.create_model(arch, pretrained=checkpoint, device=device, precision=precision, force_preprocess_cfg=force_pp)
    except (RuntimeError, KeyError, ValueError) as exc:
        what = f"weights {checkpoint}" if checkpoint else "a random model"
        raise BackboneError(f"cannot create {arch} with {what}: {first_line(exc)}") from exc


def _in_checkpoint_folder(path: Path) -> bool:
    """Whether ``path`` is the weights file of an open_clip folder (``open_clip_config.json`` beside it)."""
    return path.is_file() and path.name in (CHECKPOINT_NAME, "open_clip_model.safetensors") and (path.parent / OPEN_CLIP_CONFIG_NAME).is_file()


def _create_from_dir(path: Path, arch: str, device, precision) -> tuple[torch.nn.Module, str, str, dict]:
    """An open_clip folder (``open_clip_config.json`` + weights, as ``save_checkpoint`` writes it),
    loaded with open_clip's ``local-dir:`` schema; returns (model, arch, weights id, model config)."""
    cfg_path = path / OPEN_CLIP_CONFIG_NAME
    if not cfg_path.is_file():
        raise BackboneError(f"{path} is a folder without {OPEN_CLIP_CONFIG_NAME}; pass the checkpoint file instead")
    weights = next((path / n for n in (CHECKPOINT_NAME, "open_clip_model.safetensors") if (path / n).is_file()), None)
    if weights is None:
        raise BackboneError(f"no weights ({CHECKPOINT_NAME}) in {path}")
    info = json.loads(cfg_path.read_text())
    model_cfg = info["model_cfg"]
    force_pp = {"mean": imagenet.MEAN, "std": imagenet.STD} if imagenet_net(model_cfg) else None  # the CNN's own normalisation
    try:
        model = open_clip.create_model(f"local-dir:{path}", device=device, precision=precision, force_preprocess_cfg=force_pp)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise BackboneError(f"cannot create the model in {path}: {first_line(exc)}") from exc
    return model, info.get("arch", arch), file_sha256(weights)[:16], model_cfg


def _hub_reachable() -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline switch (``constants.HF_HUB_OFFLINE``, read at each download) on for
    this block only, and put back as it was after it."""
    import huggingface_hub.constants as hf_constants

    before = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = before


def _create_from_tag(arch: str, tag: str, device, precision) -> torch.nn.Module:
    tags = [t for a, t in open_clip.list_pretrained() if a == arch]
    if tag not in tags:
        known = ", ".join(tags) or "none"
        raise BackboneError(
            f"'{tag}' is neither a file nor a known open_clip tag for {arch} (tags: {known}); "
            f"use --pretrained none, default, a tag, or a checkpoint path"
        )
    offline = not _hub_reachable()
    try:
        with _hub_offline(offline):  # the local cache only; without it the hub client retries for ~a minute
            return open_clip.create_model(arch, pretrained=tag, device=device, precision=precision)
    except Exception as exc:  # download and cache failures come in many types
        hint = (
            "the model hub is unreachable and the weights are not cached"
            if offline
            else f"download failed: {first_line(exc)}"
        )
        raise BackboneError(
            f"cannot load pretrained tag '{tag}' for {arch}: {hint}. Download the checkpoint on a connected "
            f"machine and pass it as a file: --pretrained /path/to/open_clip_pytorch_model.bin"
        ) from exc



def save_checkpoint(
    model: torch.nn.Module, arch: str, out_dir: str | Path, extra: dict | None = None, model_cfg: dict | None = None
) -> Path:
    """Write an open_clip-loadable checkpoint to ``out_dir`` and return the weights path.

    Written beside the weights: ``<arch>.json`` (for ``open_clip.add_model_config``) and
    ``open_clip_config.json`` (for ``open_clip.create_model("local-dir:OUT_DIR")``), so both
    ``add_model_config(dir); create_model_and_transforms(arch, pretrained=file)`` and the
    ``local-dir:`` schema load it with plain open_clip.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = model_cfg or model_config(arch)
    if model_cfg is None:
        raise BackboneError(f"no open_clip config known for {arch}")
    pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    weights = out_dir / CHECKPOINT_NAME
    tmp = weights.with_suffix(".tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, weights)
    (out_dir / f"{arch}.json").write_text(json.dumps(model_cfg, indent=2))
    info = {"arch": arch, "model_cfg": model_cfg, "preprocess_cfg": pp, **(extra or {})}
    (out_dir / OPEN_CLIP_CONFIG_NAME).write_text(json.dumps(info, indent=2, default=str))
    logger.info("wrote open_clip checkpoint %s", weights)
    return weights
