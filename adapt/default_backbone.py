"""The embedded default backbone: pretrained by ``adapt pretrain --preset default``, cached per user.

``default_checkpoint(arch)`` returns the cached checkpoint, building it on first use (with a
progress bar) when it is absent.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path


logger = logging.getLogger(__name__)


def default_dir(arch: str) -> Path:
    from adapt.features import cache_dir

    return Path(os.environ.get("ADAPT_DEFAULT_BACKBONE_DIR") or cache_dir() / "backbones" / f"{arch}-default")


def default_checkpoint(arch: str) -> Path:
    from adapt.backbone import CHECKPOINT_NAME

    path = default_dir(arch) / CHECKPOINT_NAME
    if path.is_file():
        return path
    import fcntl

    from adapt.pretrain import build_default_backbone

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".build.lock", "w") as lock:
        if path.is_file():
            return path
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("another process is building the default %s backbone in %s; waiting for it", arch, path.parent)
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.is_file():
                return path
        logger.warning(
            "no default %s backbone cached at %s: pretraining it now, once (about 15 minutes on 2 CPU cores)", arch, path.parent
        )
        try:
            return build_default_backbone(arch, path.parent)
        except KeyboardInterrupt:
            logger.warning("interrupted: the next run continues the build from its last checkpoint")
            raise
