"""Product defaults that the CLI needs before any heavy import (no torch here)."""

DEFAULT_ARCH = "adapt-effnet-lite0"  # ImageNet EfficientNet-Lite0 image tower + LiT text tower
BUILTIN_ARCHS = ("adapt-effnet-lite0", "adapt-effnet-lite2", "adapt-small", "adapt-tiny")
