"""The embedded default backbone: pretrained by ``adapt pretrain --preset default``, cached per user.

``default_checkpoint(arch)`` returns the cached checkpoint, building it on first use (with a
progress bar) when it is absent.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from adapt.errors import BackboneError

logger = logging.getLogger(__name__)


def default_dir(arch: str) -> Path:
    from adapt.features import cache_dir

    return Path(os.environ.get("ADAPT_DEFAULT_BACKBONE_DIR") or cache_dir() / "backbones" / f"{arch}-default")


def default_checkpoint(arch: str) -> Path:
    from adapt.backbone import CHECKPOINT_NAME

    path = default_dir(arch) / CHECKPOINT_NAME
    if path.is_file():
        return path
    try:
        from adapt.pretrain import build_default_backbone
    except ImportError as exc:
        raise BackboneError(
            f"no default backbone for {arch} at {path} and this build cannot pretrain one; "
            f"pass --pretrained none, a checkpoint file, or an open_clip tag"
        ) from exc
    logger.warning("no default %s backbone cached at %s: pretraining it now (one time)", arch, path.parent)
    return build_default_backbone(arch, path.parent)
