"""Adaptation methods. ``fit(method, ctx, overrides)`` runs one and returns a ``FitResult``."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from adapt.methods.base import AdaptContext, FitResult, Method

CONFIGS = {
    Method.ZEROSHOT: ("adapt.methods.zeroshot", "ZeroShotConfig", "fit_zeroshot"),
    Method.LINEAR: ("adapt.methods.linear", "LinearConfig", "fit_linear"),
    Method.COOP: ("adapt.methods.coop", "CoOpConfig", "fit_coop"),
    Method.LORA: ("adapt.methods.lora", "LoraConfig", "fit_lora"),
    Method.TIP_ADAPTER: ("adapt.methods.tip_adapter", "TipAdapterConfig", "fit_tip_adapter"),
}


def _parts(method: Method):
    import importlib

    module, config, fit_fn = CONFIGS[Method(method)]
    mod = importlib.import_module(module)
    return getattr(mod, config), getattr(mod, fit_fn)


def config_fields(method: Method | str) -> dict[str, Any]:
    """Hyper-parameter names and defaults of a method (for ``--help`` and validation)."""
    config_cls, _ = _parts(Method(method))
    return {f.name: getattr(config_cls(), f.name) for f in dataclasses.fields(config_cls)}


def make_config(method: Method | str, overrides: dict[str, str] | None = None):
    """Build a method's config from ``KEY=VALUE`` strings, parsed by the default's type."""
    config_cls, _ = _parts(Method(method))
    defaults = config_cls()
    kwargs = {}
    for key, text in (overrides or {}).items():
        if not hasattr(defaults, key):
            known = ", ".join(config_fields(method)) or "none"
            raise ValueError(f"unknown hyper-parameter '{key}' for {Method(method).value} (known: {known})")
        kwargs[key] = _parse_like(getattr(defaults, key), text)
    return config_cls(**kwargs)


def _parse_like(default: Any, text: str) -> Any:
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got '{text}'")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, list):
        if text.startswith("["):
            return json.loads(text)
        items = [t for t in text.split(",") if t]
        kind = type(default[0]) if default else str
        return [kind(t) for t in items]
    return text


def fit(method: Method | str, ctx: AdaptContext, config=None) -> FitResult:
    _, fit_fn = _parts(Method(method))
    return fit_fn(ctx, config)


__all__ = ["AdaptContext", "FitResult", "Method", "config_fields", "fit", "make_config"]
