"""Adaptation methods. ``fit(method, ctx, config)`` runs one and returns a ``FitResult``.

Their hyper-parameters (typed, torch-free dataclasses) are in ``adapt.method_configs``.
"""

from __future__ import annotations

import importlib

from adapt.method_configs import config_fields, make_config
from adapt.methods.base import AdaptContext, FitResult, Method

FIT_FUNCTIONS = {
    Method.ZEROSHOT: ("adapt.methods.zeroshot", "fit_zeroshot"),
    Method.LINEAR: ("adapt.methods.linear", "fit_linear"),
    Method.COOP: ("adapt.methods.coop", "fit_coop"),
    Method.LORA: ("adapt.methods.lora", "fit_lora"),
    Method.TIP_ADAPTER: ("adapt.methods.tip_adapter", "fit_tip_adapter"),
    Method.PATCHCORE: ("adapt.methods.patchcore", "fit_patchcore"),
}


def fit(method: Method | str, ctx: AdaptContext, config=None) -> FitResult:
    module, name = FIT_FUNCTIONS[Method(method)]
    return getattr(importlib.import_module(module), name)(ctx, config)


__all__ = ["AdaptContext", "FitResult", "Method", "config_fields", "fit", "make_config"]
