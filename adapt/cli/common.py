"""Options shared by several commands."""

from __future__ import annotations

import argparse


def add_backbone_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("backbone")
    g.add_argument("--backbone", default="adapt-small", metavar="ARCH",
                   help="open_clip architecture (built-in adapt-tiny/adapt-small, or any open_clip name such as ViT-B-16); default: %(default)s")
    g.add_argument("--pretrained", default="default", metavar="WEIGHTS",
                   help="'default' (this product's pretrained backbone, built on first use), 'none' (random init), "
                        "a checkpoint file/folder, or an open_clip tag (needs network); default: %(default)s")
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
