"""Adaptation methods. ``fit(method, ctx, config)`` runs one and returns a ``FitResult``.

``registry`` lists them (one ``MethodSpec`` each: name, config dataclass, fit function, pipeline
hooks); it and the hyper-parameters (``configs``: typed dataclasses with per-field help) import
without torch, so the CLI can validate and document them in milliseconds; the contract (``base``:
``AdaptContext``, ``FitResult``) and the methods themselves load on use.
"""

from __future__ import annotations

from adapt.methods.names import Method
from adapt.methods.registry import config_fields, get, make_config


def fit(method, ctx, config=None):
    """Run ``method`` (a name or ``Method``) on ``ctx`` (an ``AdaptContext``) with ``config`` (its dataclass, or None for defaults)."""
    spec = get(method)
    return spec.fit(ctx, config if config is not None else spec.config())


def __getattr__(name: str):
    if name in ("AdaptContext", "FitResult", "TrainConfig", "TrainResult"):
        from adapt.methods import base

        return getattr(base, name)
    raise AttributeError(f"module 'adapt.methods' has no attribute {name!r}")


__all__ = ["AdaptContext", "FitResult", "Method", "config_fields", "fit", "make_config"]
