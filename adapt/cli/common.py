"""Options shared by several commands."""

from __future__ import annotations

import argparse

from adapt.defaults import BUILTIN_ARCHS, DEFAULT_ARCH


def add_backbone_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("backbone")
    g.add_argument("--backbone", default=DEFAULT_ARCH, metavar="ARCH",
                   help=f"open_clip architecture (built-in: {', '.join(BUILTIN_ARCHS)}; or any open_clip name such as "
                        "ViT-B-16); default: %(default)s (ImageNet EfficientNet-Lite0 image tower + LiT text tower)")
    g.add_argument("--pretrained", default="default", metavar="WEIGHTS",
                   help="'default' (this product's pretrained backbone, built once the first time a command needs it, with a notice, and cached), "
                        "'imagenet' (EfficientNet-Lite towers: ImageNet image weights, untrained text tower), "
                        "'none' (random init), a checkpoint file/folder, or an open_clip tag (needs network); default: %(default)s")
    g.add_argument("--device", default="cpu", help="torch device for adaptation, e.g. cpu, cuda, cuda:1 (default: %(default)s)")


def parse_key_values(items: list[str] | None, what: str) -> dict[str, str]:
    from adapt.errors import AdaptError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AdaptError(f"{what} must look like KEY=VALUE, got '{item}'")
        out[key.strip()] = value.strip()
    return out
