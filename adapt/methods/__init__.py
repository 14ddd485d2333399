"""Adaptation methods. ``fit(method, ctx, config)`` runs one and returns a ``FitResult``.

Their names (``names.Method``) and hyper-parameters (``configs``: typed dataclasses with per-field
help) import without torch, so the CLI can validate and document them in milliseconds; the
contract (``base``: ``AdaptContext``, ``FitResult``) and the methods themselves load on use.
"""

from __future__ import annotations

import importlib

from adapt.methods.configs import config_fields, make_config
from adapt.methods.names import Method

FIT_FUNCTIONS = {
    Method.ZEROSHOT: ("adapt.methods.zeroshot", "fit_zeroshot"),
    Method.LINEAR: ("adapt.methods.linear", "fit_linear"),
    Method.COOP: ("adapt.methods.coop", "fit_coop"),
    Method.LORA: ("adapt.methods.lora", "fit_lora"),
    Method.TIP_ADAPTER: ("adapt.methods.tip_adapter", "fit_tip_adapter"),
    Method.PATCHCORE: ("adapt.methods.patchcore", "fit_patchcore"),
}


def fit(method: Method | str, ctx, config=None):
    """Run ``method`` on ``ctx`` (an ``AdaptContext``) with ``config`` (its dataclass, or None for defaults)."""
    module, name = FIT_FUNCTIONS[Method(method)]
    return getattr(importlib.import_module(module), name)(ctx, config)


def __getattr__(name: str):
    if name in ("AdaptContext", "FitResult", "TrainConfig", "TrainResult"):
        from adapt.methods import base

        return getattr(base, name)
    raise AttributeError(f"module 'adapt.methods' has no attribute {name!r}")


__all__ = ["AdaptContext", "FitResult", "Method", "config_fields", "fit", "make_config"]
