"""Product defaults that the CLI needs before any heavy import (no torch here)."""

import os
from pathlib import Path

DEFAULT_ARCH = "adapt-effnet-lite0"  # ImageNet EfficientNet-Lite0 image tower + LiT text tower
BUILTIN_ARCHS = ("adapt-effnet-lite0", "adapt-effnet-lite2", "adapt-small", "adapt-tiny")


def cache_dir() -> Path:
    """Where adapt caches features, the default backbone and registry downloads: ``$ADAPT_CACHE_DIR``
    or the user cache dir (``~/.cache/adapt`` on Linux)."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("ADAPT_CACHE_DIR") or user_cache_dir("adapt"))
