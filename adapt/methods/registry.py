"""The adaptation methods: one entry each, the only list of them (peft's PEFT_TYPE -> config/tuner
mapping is the model).

An entry (``MethodSpec``) names the method, its hyper-parameter dataclass (``adapt.methods.configs``),
its fit function, and what the retrain pipeline and the CLI must know about it: how it splits the
data (``split``: the few-shot split, or the anomaly split for methods that learn from good parts),
whether it needs ``--good-label``, whether it takes ``--unlabeled`` images, and whether
``--method auto`` cross-validates it. Nothing outside this file asks which method it is.

Torch-free: the CLI validates ``--method``, ``--hp``, ``--good-label`` and ``--unlabeled`` with it in
milliseconds. The fit functions below import their module on call, and name it.

Adding a method: write ``adapt/methods/<name>.py`` (a config dataclass and ``fit(ctx, cfg) ->
FitResult``) and add one ``register(MethodSpec(...))`` line here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from adapt.methods.configs import (
    CoOpConfig,
    LinearConfig,
    LoraConfig,
    PatchCoreConfig,
    TipAdapterConfig,
    ZeroShotConfig,
    build_config,
)

if TYPE_CHECKING:
    from adapt.data import DatasetSplits, FewShotSplit

AUTO = "auto"  # --method auto: cross-validate the entries with auto=True, keep the best (adapt.methods.selection)


@dataclass
class Prepared:
    """What a method's ``split`` hook makes of the dataset: the data to evaluate on, the few-shot
    split to fit on, params to record, and extra held-out metrics (``(probs, fitted params) -> dict``)."""

    data: DatasetSplits
    split: FewShotSplit
    params: dict = field(default_factory=dict)
    extra_metrics: Callable[[Any, dict], dict] | None = None


def few_shot(data, shots: int, seed: int, val_shots: int | None, good_label: str = "") -> Prepared:
    """K labelled images per class to fit on and K more to choose with, from the train pool."""
    from adapt.data import few_shot_split

    return Prepared(data, few_shot_split(data.train, shots, seed, val_shots))


def good_versus_defective(data, shots: int, seed: int, val_shots: int | None, good_label: str = "") -> Prepared:
    """Binary good/defective; K good images to fit on, defects only to validate and test."""
    from adapt.data.anomaly import anomaly_metrics, anomaly_split

    a = anomaly_split(data, good_label, shots, seed, val_shots)
    return Prepared(
        a.data, a.split, {"good_label": good_label, "defect_classes": list(a.defect_classes)},
        lambda probs, params: {"anomaly": {
            **anomaly_metrics(probs, a.test_kinds, good_label),
            **{k: params[k] for k in ("score", "threshold_rule") if k in params},  # which score, which threshold
        }},
    )


def auto_split(data, shots: int, seed: int, val_shots: int | None, good_label: str = "") -> Prepared:
    """``--method auto``: the few-shot split; with ``--good-label`` of the data made binary (good /
    defective), so that the anomaly methods and the classifiers answer the same question."""
    if not good_label:
        return few_shot(data, shots, seed, val_shots)
    from adapt.data import DatasetSplits, few_shot_split
    from adapt.data.anomaly import anomaly_metrics, binary
    from adapt.errors import DataError

    if good_label not in data.classes:
        raise DataError(f"--good-label '{good_label}' is not a class of {data.name} (its classes: {list(data.classes)})")
    good = data.classes.index(good_label)
    kinds = tuple(data.classes[i] for i in data.test.labels)
    binary_data = DatasetSplits(data.name, binary(data.train, good), binary(data.test, good), {})
    return Prepared(
        binary_data, few_shot_split(binary_data.train, shots, seed, val_shots),
        {"good_label": good_label, "defect_classes": [c for c in data.classes if c != good_label]},
        lambda probs: {"anomaly": anomaly_metrics(probs, kinds, good_label)},
    )


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config: type  # the hyper-parameter dataclass (``--hp``)
    fit: Callable  # (AdaptContext, config) -> FitResult
    summary: str = ""
    split: Callable[..., Prepared] = few_shot
    needs_good_label: bool = False  # learns from the --good-label class only
    accepts_unlabeled: bool = False  # uses --unlabeled images
    auto: bool = False  # a candidate of --method auto


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name == AUTO:
        raise ValueError(f"'{AUTO}' is not a method name: it chooses among the methods")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def get(name) -> MethodSpec:
    """The entry of ``name`` (a string or ``Method``); ValueError naming the known ones."""
    key = getattr(name, "value", name)
    if key not in REGISTRY:
        raise ValueError(f"unknown method '{key}' (known: {', '.join(REGISTRY)})")
    return REGISTRY[key]


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def auto_candidates(good_label: str = "") -> list[MethodSpec]:
    """What ``--method auto`` cross-validates: the auto entries; those needing a good label only when given one."""
    return [s for s in REGISTRY.values() if s.auto and (bool(good_label) or not s.needs_good_label)]


def check_options(method: str, good_label: str = "", unlabeled: bool = False) -> None:
    """The ``--good-label`` and ``--unlabeled`` rules, in one place: ValueError with the one-line reason."""
    if method == AUTO:
        if unlabeled:
            raise ValueError("--unlabeled needs a named method: " + ", ".join(s.name for s in REGISTRY.values() if s.accepts_unlabeled))
        return
    spec = get(method)
    if spec.needs_good_label and not good_label:
        raise ValueError(f"--method {spec.name} needs --good-label LABEL (the class of good parts)")
    if good_label and not spec.needs_good_label:
        users = ", ".join(s.name for s in REGISTRY.values() if s.needs_good_label)
        raise ValueError(f"--good-label is for --method {users} (or auto), not {spec.name}")
    if unlabeled and not spec.accepts_unlabeled:
        users = ", ".join(s.name for s in REGISTRY.values() if s.accepts_unlabeled)
        raise ValueError(f"--unlabeled is used by --method {users} only (measured: experiments/unlabeled/results.md), not {spec.name}")


def make_config(method, overrides: dict[str, str] | None = None):
    """The method's config from ``KEY=VALUE`` strings (ValueError names an unknown or malformed one)."""
    spec = get(method)
    return build_config(spec.config, overrides, spec.name)


def config_fields(method) -> dict[str, Any]:
    """Hyper-parameter names and defaults of a method."""
    config_cls = get(method).config
    return {f.name: getattr(config_cls(), f.name) for f in dataclasses.fields(config_cls)}


def help_text() -> str:
    """``--hp`` names, defaults and help of every method, for ``adapt retrain --help``."""
    lines = []
    for spec in REGISTRY.values():
        fields = dataclasses.fields(spec.config)
        if not fields:
            lines.append(f"  {spec.name}: none")
            continue
        lines.append(f"  {spec.name}:")
        defaults = spec.config()
        for f in fields:
            value = getattr(defaults, f.name)
            shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, list) else value
            shown = str(shown)
            if len(shown) > 40:
                shown = shown[:37] + "..."
            lines.append(f"    {f.name}={shown}")
            lines.append(f"        {f.metadata.get('help', '')}")
    return "\n".join(lines)


# The fit functions, imported on call (torch, open_clip, peft load only when a method runs).


def fit_zeroshot(ctx, cfg):
    from adapt.methods.zeroshot import fit_zeroshot

    return fit_zeroshot(ctx, cfg)


def fit_linear(ctx, cfg):
    from adapt.methods.linear import fit_linear

    return fit_linear(ctx, cfg)


def fit_coop(ctx, cfg):
    from adapt.methods.coop import fit_coop

    return fit_coop(ctx, cfg)


def fit_lora(ctx, cfg):
    from adapt.methods.lora import fit_lora

    return fit_lora(ctx, cfg)


def fit_tip_adapter(ctx, cfg):
    from adapt.methods.tip_adapter import fit_tip_adapter

    return fit_tip_adapter(ctx, cfg)


def fit_patchcore(ctx, cfg):
    from adapt.methods.patchcore import fit_patchcore

    return fit_patchcore(ctx, cfg)


# In order of cost: --method auto tries its candidates in this order and, within noise, keeps the earlier.
register(MethodSpec("zeroshot", ZeroShotConfig, fit_zeroshot, "class prompts only, no training"))
register(MethodSpec("linear", LinearConfig, fit_linear, "logistic regression on frozen features", accepts_unlabeled=True, auto=True))
register(MethodSpec("tip-adapter", TipAdapterConfig, fit_tip_adapter, "training-free feature cache", auto=True))
register(MethodSpec("patchcore", PatchCoreConfig, fit_patchcore, "anomaly detection from good parts only",
                    split=good_versus_defective, needs_good_label=True, auto=True))
register(MethodSpec("coop", CoOpConfig, fit_coop, "learned prompt context"))
register(MethodSpec("lora", LoraConfig, fit_lora, "low-rank adapters in the image tower + linear head", auto=True))
