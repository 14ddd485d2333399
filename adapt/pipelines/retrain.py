"""``adapt retrain``: few-shot adaptation from data to an exported, evaluated classifier.

One function, ``run_retrain``, does: load data -> few-shot split (train pool only) -> backbone
-> method -> reject threshold on the few-shot val split -> save + export ONNX (parity checked)
-> evaluate the exported model on the held-out test split -> write the results to
``output_dir``. Tracking (MLflow) hooks in through ``RunHooks``; the pipeline itself knows
nothing about it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from adapt import __version__
from adapt.contract.imageio import ResizeMode
from adapt.defaults import DEFAULT_ARCH
from adapt.pipelines.default_backbone import load_backbone
from adapt.data import load_dataset
from adapt.core.evaluation import choose_reject_threshold, compute_metrics, save_confusion_matrix, save_metrics
from adapt.methods import AdaptContext
from adapt.methods import registry
from adapt.pipelines.review import at_threshold, save_risk_coverage
from adapt.contract.model_uri import ONNX_FILE as MODEL_FILE  # the run folder's model files are named once, in the contract
from adapt.contract.model_uri import TORCH_FILE

logger = logging.getLogger(__name__)

METRICS_FILE, CM_FILE, LABELS_FILE, RUN_FILE, RISK_FILE = (
    "metrics.json",
    "confusion_matrix.png",
    "labels.json",
    "run.json",
    "risk_coverage.png",
)


@dataclass
class RetrainConfig:
    data: str  # folder, CSV, elpv[...], synthetic[...]
    method: str = registry.AUTO  # a name in adapt.methods.registry, or auto: chosen by cross-validation
    shots: int = 16  # labelled training images per class
    seed: int = 1  # few-shot draw, initialisation, training order
    val_shots: int | None = None  # validation images per class (default: same as shots, at least 2)
    backbone: str = DEFAULT_ARCH  # open_clip architecture
    pretrained: str = "default"  # none | default | open_clip tag | checkpoint file or folder
    output_dir: Path | None = None
    hparams: dict[str, str] = field(default_factory=dict)  # method hyper-parameters KEY=VALUE
    descriptions: dict[str, str] = field(default_factory=dict)  # class -> prompt words (zero-shot style heads)
    device: str = "cpu"
    target_accuracy: float = 0.95  # reject threshold: the auto-decided (accepted) parts reach this accuracy ...
    review_budget: float = 0.5  # ... sending at most this share of parts to review (estimated on held-out few-shot images)
    reject_threshold: float | None = None  # fixed threshold instead of the chosen one
    test_fraction: float = 0.25
    resize_mode: str = "squash"  # squash | shortest (centre crop): how any image becomes the square input
    strict_images: bool = False  # fail on unreadable images instead of skipping them
    model_name: str = ""  # recorded in the exported metadata
    include: list[str] = field(default_factory=list)  # extra labelled folders/CSVs for the train pool only (e.g. operator feedback)
    unlabeled: str | None = None  # unlabeled images of the line (folder, CSV, elpv) for semi-supervised methods; test images are left out
    progress: bool = True
    use_feature_cache: bool = True
    good_label: str = ""  # anomaly methods (patchcore): the class to learn from; every other class is "defective"
    budget_minutes: float = 3.0  # auto: time for cross-validating the candidates (the refit and evaluation come on top)
    cv_folds: int = 4  # auto: k of the repeated stratified k-fold
    cv_repeats: int = 5  # auto: most repeats (as many as the budget allows)

    def __post_init__(self) -> None:
        if self.method != registry.AUTO:
            self.method = registry.get(self.method).name
        elif self.hparams:
            raise ValueError("--hp sets one method's hyper-parameters: name the --method too")
        if self.shots < 1:
            raise ValueError("shots must be >= 1")
        if self.budget_minutes <= 0:
            raise ValueError("--budget-minutes must be positive")
        if not 0 <= self.review_budget <= 1 or not 0 < self.target_accuracy <= 1:
            raise ValueError("--review-budget must be in [0, 1] and --target-accuracy in (0, 1]")
        registry.check_options(self.method, self.good_label, bool(self.unlabeled))
        self.resize_mode = ResizeMode(self.resize_mode).value  # ValueError names the bad value
        if self.output_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            safe = str(self.data).replace("/", "_").replace(":", "-").strip("._") or "data"
            self.output_dir = Path("runs") / "retrain" / f"{safe}-{self.method}-{self.shots}shot-seed{self.seed}-{stamp}"
        self.output_dir = Path(self.output_dir)


class RunHooks:
    """Where a tracker plugs in; every method is a no-op here."""

    def started(self, params: dict) -> None: ...

    def dataset(self, name: str, fingerprint: str, source: str, counts: dict[str, int]) -> None: ...

    def lightning_loggers(self) -> list:
        return []

    def metrics(self, values: dict[str, float], step: int) -> None: ...

    def finished(self, result: "RetrainResult") -> None: ...


@dataclass
class RetrainResult:
    output_dir: Path
    metrics: dict
    params: dict
    model_path: Path
    classifier_path: Path
    dataset_fingerprint: str
    timings: dict


def _with_extra_training_images(data, include: list[str], strict: bool):
    """Add labelled images (e.g. the service's feedback store) to the train pool; the test split stays."""
    from adapt.data.images import DatasetSplits
    from adapt.data.sources import load_all_images, merge_image_sets
    from adapt.errors import DataError

    train = data.train
    for spec in include:
        extra = load_all_images(spec, strict)
        unknown = sorted(set(extra.classes) - set(data.classes))
        if unknown:
            raise DataError(f"{spec} has label(s) {unknown} that {data.name} does not have (its labels: {list(data.classes)})")
        logger.info("adding %d labelled image(s) from %s to the training pool", len(extra), spec)
        train = merge_image_sets(train, extra)
    if train is data.train:
        return data
    return DatasetSplits(data.name, train, data.test, data.descriptions)  # same classes, same order: extras add none


def retrain_context(cfg: RetrainConfig, backbone, split, descriptions: dict[str, str], hooks: RunHooks, unlabeled=None) -> AdaptContext:
    """What the methods get: the data, the device, and the Lightning loop bound to that device and the run's loggers."""
    from adapt.training.supervised import loop

    return AdaptContext(
        backbone=backbone,
        split=split,
        descriptions=descriptions,
        device=cfg.device,
        seed=cfg.seed,
        progress=cfg.progress,
        use_feature_cache=cfg.use_feature_cache,
        train=loop(device=cfg.device, loggers=hooks.lightning_loggers(), progress=cfg.progress, seed=cfg.seed),
        on_metrics=hooks.metrics,
        unlabeled=unlabeled,
    )


def run_retrain(cfg: RetrainConfig, hooks: RunHooks | None = None) -> RetrainResult:
    hooks = hooks or RunHooks()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    auto = cfg.method == registry.AUTO
    spec = None if auto else registry.get(cfg.method)
    method_cfg = None if auto else registry.make_config(spec.name, cfg.hparams)  # bad hyper-parameters fail before any work
    data = load_dataset(cfg.data, test_fraction=cfg.test_fraction, strict=cfg.strict_images)
    data = _with_extra_training_images(data, cfg.include, cfg.strict_images)
    prepared = (registry.auto_split if auto else spec.split)(data, cfg.shots, cfg.seed, cfg.val_shots, cfg.good_label)
    data, split = prepared.data, prepared.split
    logger.info(
        "%s: %d classes, %d train + %d val few-shot images, %d held-out test images",
        data.name, len(data.classes), len(split.train), len(split.val), len(data.test),
    )
    torch.manual_seed(cfg.seed)
    backbone = replace(load_backbone(cfg.backbone, cfg.pretrained, device=cfg.device), resize_mode=cfg.resize_mode)
    timings["load_s"] = time.perf_counter() - t0
    descriptions = {**data.descriptions, **cfg.descriptions}
    params = {
        "method": cfg.method,
        "shots": cfg.shots,
        "val_shots": len(split.val) // max(1, len(data.classes)),
        "seed": cfg.seed,
        "dataset": data.name,
        "dataset_fingerprint": data.fingerprint(),  # hashes every test image: computed once per run
        "backbone": cfg.backbone,
        "pretrained": cfg.pretrained,
        "backbone_weights": backbone.weights_id,
        "resize_mode": cfg.resize_mode,
        "classes": list(data.classes),
        "adapt_version": __version__,
    }
    if not auto:
        params.update({f"hp.{k}": v for k, v in asdict(method_cfg).items()})
    unlabeled = None
    if cfg.unlabeled:
        from adapt.data.unlabeled import load_unlabeled, unlabeled_fingerprint

        unlabeled = load_unlabeled(cfg.unlabeled, exclude=data.test)
        params.update({"unlabeled": cfg.unlabeled, "unlabeled_images": len(unlabeled), "unlabeled_fingerprint": unlabeled_fingerprint(unlabeled)})
        logger.info("%d unlabeled image(s) from %s (fingerprint %s)", len(unlabeled), cfg.unlabeled, params["unlabeled_fingerprint"])
    params.update(prepared.params)
    hooks.started(params)
    counts = {"train_pool": len(data.train), "test": len(data.test), "few_shot_train": len(split.train), "few_shot_val": len(split.val)}
    if unlabeled is not None:
        counts["unlabeled"] = len(unlabeled)
    hooks.dataset(data.name, params["dataset_fingerprint"], str(cfg.data), counts)

    t1 = time.perf_counter()
    selection = None
    if auto:
        from adapt.methods.selection import cross_validate_methods

        candidates = [(s, s.config()) for s in registry.auto_candidates(cfg.good_label)]
        quiet = retrain_context(replace(cfg, progress=False), backbone, split, descriptions, RunHooks())
        logger.info("auto: cross-validating %s within %.1f min", ", ".join(s.name for s, _ in candidates), cfg.budget_minutes)
        selection = cross_validate_methods(candidates, quiet, cfg.budget_minutes * 60, cfg.cv_folds, cfg.cv_repeats, cfg.seed)
        spec = registry.get(selection.choice)
        method_cfg = next(c for s, c in candidates if s.name == spec.name)
        params.update(selection.params())
        params.update({f"hp.{k}": v for k, v in asdict(method_cfg).items()})
        hooks.metrics(selection.metrics(), 0)
        timings["select_s"] = time.perf_counter() - t1
        logger.info("auto: %s (%s); refitting it on the labelled images", spec.name, selection.reason)
    t_fit = time.perf_counter()
    ctx = retrain_context(cfg, backbone, split, descriptions, hooks, unlabeled)
    if auto:
        ctx.feature_memo = quiet.feature_memo  # the cross-validation computed these images' features already
    fitted = spec.fit(ctx, method_cfg)
    timings["fit_s"] = time.perf_counter() - t_fit
    timings["adapt_s"] = time.perf_counter() - t1
    for note in fitted.notes:
        logger.warning("%s", note)
    params.update({f"chosen.{k}": v for k, v in fitted.params.items() if not isinstance(v, (list, dict))})

    classifier = fitted.classifier
    held_probs, held_labels, source = fitted.val_probabilities, split.val.labels, f"validation split ({len(split.val)} images)"
    if fitted.val_labels is not None:  # the method's own held-out predictions (e.g. out-of-fold over train + val)
        held_labels, source = fitted.val_labels, fitted.val_source or f"held-out predictions ({len(fitted.val_labels)} images)"
    oof = selection.result(spec.name).out_of_fold() if selection is not None and fitted.val_labels is None else None
    if oof is not None:  # every labelled image, predicted by a model that did not see it (methods with their own come first:
        # theirs are at the final hyper-parameters, closer to the refitted model's confidence)
        held_probs, held_labels, source = oof, selection.pool.labels, f"cross-validation ({len(oof)} labelled images)"
    threshold = cfg.reject_threshold
    if threshold is None:
        threshold = choose_reject_threshold(held_probs, held_labels, cfg.target_accuracy, cfg.review_budget)
    classifier.info.reject_threshold = float(threshold)
    params.update(reject_threshold=float(threshold), review_budget=cfg.review_budget, target_accuracy=cfg.target_accuracy, threshold_estimated_on=source)
    review = {"budget": cfg.review_budget, "target_accuracy": cfg.target_accuracy, "estimated_on": source}
    if held_probs is not None and len(held_labels):
        review["expected_review_rate"], review["expected_accuracy_on_accepted"] = at_threshold(held_probs, held_labels, threshold)
        hooks.metrics({f"review/{k}": v for k, v in review.items() if k.startswith("expected_")}, 0)

    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    from adapt.core.classifier import save_classifier
    from adapt.core.export import PARITY_TOLERANCE, export_onnx
    from adapt.core.predict import predict_exported

    t2 = time.perf_counter()
    save_classifier(classifier, out / TORCH_FILE)
    model_path = export_onnx(classifier, out / MODEL_FILE, model_name=cfg.model_name or data.name)
    timings["export_s"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    meta = classifier.info.metadata()
    probs, evaluation = predict_exported(model_path, data.test, meta, fitted.predict, tolerance=PARITY_TOLERANCE, progress=cfg.progress)
    metrics = compute_metrics(probs, data.test.labels, data.classes, reject_threshold=threshold)
    metrics["evaluation"] = evaluation
    if prepared.extra_metrics is not None:
        metrics.update(prepared.extra_metrics(probs, fitted.params))
    if selection is not None:
        metrics["selection"] = selection_record(selection)
    if fitted.notes:
        metrics["notes"] = list(fitted.notes)
    metrics["review"] = review
    timings["evaluate_s"] = time.perf_counter() - t3
    timings["total_s"] = time.perf_counter() - t0
    metrics.update(
        {"dataset": data.name, "dataset_fingerprint": params["dataset_fingerprint"], "method": spec.name, "shots": cfg.shots, "seed": cfg.seed}
    )
    save_metrics(metrics, out / METRICS_FILE)
    save_confusion_matrix(
        metrics["confusion_matrix"], data.classes, out / CM_FILE,
        title=f"{data.name} · {spec.name} · {cfg.shots}-shot · bal. acc {metrics['balanced_accuracy']:.1%}",
    )
    (out / LABELS_FILE).write_text(json.dumps(list(data.classes)))
    curves = {"held-out test": (probs, data.test.labels)}
    points = {"held-out test": at_threshold(probs, data.test.labels, threshold)}
    if held_probs is not None and len(held_labels):
        curves = {f"estimate: {source}": (held_probs, held_labels), **curves}
        points[f"estimate: {source}"] = at_threshold(held_probs, held_labels, threshold)
    save_risk_coverage(curves, points, out / RISK_FILE, title=f"{data.name} · {spec.name} · threshold {threshold:.2f}",
                       budget=cfg.review_budget, target=cfg.target_accuracy)
    run_record = {"params": params, "timings": timings, "history": fitted.history}
    (out / RUN_FILE).write_text(json.dumps(run_record, indent=2, default=str))
    result = RetrainResult(out, metrics, params, model_path, out / TORCH_FILE, params["dataset_fingerprint"], timings)
    hooks.finished(result)
    return result


def selection_record(selection) -> dict:
    """``--method auto``'s choice and every candidate's cross-validation, for metrics.json and the summary."""
    return {
        "choice": selection.choice,
        "reason": selection.reason,
        "folds": selection.folds,
        "repeats": selection.repeats,
        "labelled_images": len(selection.pool),
        "candidates": {
            r.method: {"mean": r.mean, "std": r.std, "folds": len(r.used), "seconds": r.seconds, "skipped": r.skipped}
            for r in selection.results
        },
    }
