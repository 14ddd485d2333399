"""PatchCore (Roth et al. 2022) on the frozen backbone: anomaly detection from good images only.

The memory bank holds mid-level patch features (``adapt.core.encoders`` part ``patches``) of the good
training images, by default also of their flips and quarter turns (``augment``: most surfaces
have no preferred orientation, and a few good images then cover more of them), reduced by a
greedy k-center coreset (on a random projection, as in the paper) to ``coreset_fraction`` of the
patches, at most ``max_bank``. A patch's anomaly score is its distance to the nearest good patch,
an image's the mean of its worst ``top_fraction`` of patches (``adapt.core.anomaly_head``; 1% beat
the single worst patch on 8 of 9 dev draws, experiments/anomaly/README.md).

Texture-wide evidence (``combine``: ``max`` or ``sum``; ``local`` = the patch score alone, ``image`` =
the image score alone): per-image statistics of the patch features (``image_stats``; the maps of
``image_stages`` join them, not the bank) of the same good images (and flips/turns); an image's distance to their mean (``image_score``
``gaussian``, PaDiM-style) or to the nearest of them (``knn``) in the Mahalanobis metric of their
Ledoit-Wolf shrunk covariance (sklearn). That image score and the patch score are standardised by
the good validation images and combined (``adapt.core.anomaly_head``; chosen on dev folders: experiments/anomaly/).
``combine=auto`` (the default) chooses ``local``, ``image`` or ``max`` per fit: the one with the best
ROC-AUC on the validation images (``choose_combine``; the split holds defective images whenever the
labelled folder has defect classes), ``max`` where validation holds none: on folders with local marks
only the image term adds noise, on texture-wide ones it carries the signal (experiments/anomaly/).
Where it chooses ``local`` the model is the patch-score model, without the image statistics' level.

The decision threshold (``threshold_rule``) is chosen on the few-shot validation split: ``auto`` =
the best balanced accuracy when it holds defective images, else the ``good_quantile`` of the good
images' scores; ``good_quantile`` = that quantile always (good images only, defects not needed).
The rule used is in the fit's params (``threshold_rule``), which the CLI prints and MLflow logs.

Images of class 0 (``ctx.classes[0]``, the good label) build the bank; every other class counts as
``defective``. ``adapt.data.anomaly`` makes such a split from any labelled dataset.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from adapt.core.anomaly_choices import AUTO, AUTO_CANDIDATES, AUTO_FALLBACK
from adapt.core.anomaly_head import PatchCoreHead, image_stats
from adapt.core.classifier import ImageClassifier, PixelNormalizer
from adapt.data.anomaly import DEFECTIVE
from adapt.core.encoders import PATCHES, EncoderSpec, ImageEncoder, is_vit, patch_levels
from adapt.core.features import load_pixels
from adapt.methods.configs import PatchCoreConfig
from adapt.methods.base import AdaptContext, FitResult, Method

logger = logging.getLogger(__name__)

CORESET_CANDIDATES = 200_000  # patches the greedy coreset looks at (a random subset beyond that)
CORESET_PROJECTION = 128


@torch.no_grad()
def patch_features(encoder: ImageEncoder, normalize: PixelNormalizer, pixels: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> ``[N, P, D]`` patch features."""
    encoder.eval()
    out = [encoder(normalize(pixels[i : i + batch_size])) for i in range(0, len(pixels), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def dihedral(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` images and their 7 other flips / quarter turns: ``[8N, H, W, 3]``."""
    turns = [torch.rot90(pixels, k, dims=(1, 2)) for k in range(4)]
    return torch.cat(turns + [t.flip(2) for t in turns])


@torch.no_grad()
def greedy_coreset(patches: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` rows of ``patches [M, D]`` chosen by greedy k-center on a random projection."""
    g = torch.Generator().manual_seed(seed)
    candidates = torch.arange(len(patches))
    if len(patches) > CORESET_CANDIDATES:
        candidates = torch.randperm(len(patches), generator=g)[:CORESET_CANDIDATES]
    if n >= len(candidates):
        return candidates
    x = patches[candidates]
    if x.shape[1] > CORESET_PROJECTION:
        x = x @ (torch.randn(x.shape[1], CORESET_PROJECTION, generator=g) / CORESET_PROJECTION**0.5)
    chosen = torch.empty(n, dtype=torch.long)
    chosen[0] = int(torch.randint(len(x), (1,), generator=g))
    sq = (x * x).sum(dim=1)

    def sq_dist(i: int) -> torch.Tensor:  # |x - x_i|^2 as one matrix-vector product (no [M, D] temporary)
        return (sq - 2.0 * (x @ x[i]) + sq[i]).clamp_min_(0.0)

    dist = sq_dist(int(chosen[0]))
    for k in range(1, n):
        chosen[k] = int(dist.argmax())
        torch.minimum(dist, sq_dist(int(chosen[k])), out=dist)
    return candidates[chosen]


@torch.no_grad()
def image_scores(head: PatchCoreHead, features: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    out = [head.scores(features[i : i + batch_size]) for i in range(0, len(features), batch_size)]
    return torch.cat(out).numpy() if out else np.empty(0, dtype=np.float32)


def choose_threshold(scores: np.ndarray, defective: np.ndarray, good_quantile: float, good_only: bool = False) -> float:
    """Best balanced accuracy on validation (midpoints between sorted scores), or the good quantile
    (where validation holds no defects, or ``good_only``)."""
    good, bad = scores[~defective], scores[defective]
    if good_only or not len(bad):
        return float(np.quantile(good, good_quantile))
    cuts = np.unique(scores)
    candidates = np.concatenate([[cuts[0] - 1e-6], (cuts[1:] + cuts[:-1]) / 2, [cuts[-1] + 1e-6]])
    balanced = [((good < t).mean() + (bad >= t).mean()) / 2 for t in candidates]
    best = np.flatnonzero(np.isclose(balanced, max(balanced)))
    return float(candidates[best[len(best) // 2]])  # the middle of the best plateau


CNN_STAGES = (2,)  # stride 8 of an EfficientNet trunk (measured: experiments/anomaly/)
CNN_IMAGE_STAGES = (3,)  # stride 16, for the image statistics only (chosen on dev folders: experiments/anomaly/)


def fit_image_bank(stats: torch.Tensor, kind: str = "gaussian") -> tuple[torch.Tensor, torch.Tensor]:
    """(image bank, whitening ``W``) for ``PatchCoreHead`` from good images' statistics ``stats [M, G]``:
    ``W W^T`` = the precision of their Ledoit-Wolf shrunk covariance (M may be close to G); the bank is
    their mean (``gaussian``) or every row (``knn``), mapped by ``W``."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(stats.double().numpy())
    whiten = torch.linalg.cholesky(torch.from_numpy(lw.precision_))
    rows = torch.from_numpy(lw.location_)[None] if kind == "gaussian" else stats.double()
    return (rows @ whiten).float(), whiten.float()


def standardise(scores: np.ndarray) -> tuple[float, float]:
    """(mean, std) of good validation scores, the std kept away from 0."""
    return float(scores.mean()), float(max(scores.std(), 1e-6 * max(abs(scores.mean()), 1e-6)))


def patch_stages(ctx: AdaptContext, cfg: PatchCoreConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(levels of the bank's patch features, further levels only the image statistics use)."""
    visual = ctx.backbone.model.visual
    levels = patch_levels(visual)
    if not levels:
        raise ValueError(f"patchcore needs an image tower with intermediate maps (a timm CNN or an open_clip ViT); {ctx.backbone.arch} has none")
    stages = tuple(cfg.stages) or ((levels // 2,) if is_vit(visual) else CNN_STAGES)
    image_stages = tuple(cfg.image_stages) or (() if is_vit(visual) else CNN_IMAGE_STAGES)
    image_stages = tuple(s for s in image_stages if s not in stages) if cfg.combine != "local" else ()
    for name, given in (("stages", stages), ("image_stages", image_stages)):
        if any(not 0 <= s < levels for s in given):
            raise ValueError(f"--hp {name}={','.join(map(str, given))}: {ctx.backbone.arch} has levels 0-{levels - 1}")
    return stages, image_stages


def patch_encoder(ctx: AdaptContext, cfg: PatchCoreConfig) -> ImageEncoder:
    stages, image_stages = patch_stages(ctx, cfg)
    return ImageEncoder(copy.deepcopy(ctx.backbone.model.visual), EncoderSpec((PATCHES,), stages + image_stages, cfg.pool))


def score_name(cfg: PatchCoreConfig, image_stages: tuple[int, ...] = (), chosen: str = "", val_auc: dict | None = None) -> str:
    """The image score in words (metrics and the CLI say which score a model uses, and what ``auto`` chose)."""
    chosen = chosen or cfg.combine
    levels = f" with level {','.join(map(str, image_stages))}" if image_stages else ""
    image = f"image {cfg.image_score} of {cfg.image_stats}{levels}"
    if chosen == "local":
        name = f"patch (mean of the worst {cfg.top_fraction:.0%} patch distances)"
    elif chosen == "image":
        name = f"{image}, standardised on good validation images"
    else:
        name = f"{chosen}(patch, {image}), standardised on good validation images"
    if cfg.combine != AUTO:
        return name
    if not val_auc:
        return f"{name}; combine=auto: {chosen} (no defective validation image)"
    return f"{name}; combine=auto chose {chosen} (validation ROC-AUC: {', '.join(f'{c} {a:.3f}' for c, a in val_auc.items())})"


def choose_combine(heads: dict[str, PatchCoreHead], local_val: np.ndarray, features: torch.Tensor, defective: np.ndarray) -> tuple[str, dict[str, float]]:
    """``combine=auto``: of ``heads`` (one per candidate rule, in order of preference on ties), the one whose
    score has the best ROC-AUC on the validation images (patch scores ``local_val``, patch ``features``);
    ``AUTO_FALLBACK`` where they hold no defective image. Returns (the rule, every rule's ROC-AUC)."""
    from sklearn.metrics import roc_auc_score

    if not defective.any():
        return AUTO_FALLBACK, {}
    with torch.no_grad():
        val_auc = {c: float(roc_auc_score(defective, h.combined(torch.from_numpy(local_val), features).numpy())) for c, h in heads.items()}
    return max(val_auc, key=val_auc.get), val_auc  # max() keeps the first of equals


@torch.no_grad()
def bank_dim(encoder: ImageEncoder, n_stages: int, image_size: int) -> int:
    """Channels of the encoder's first ``n_stages`` levels in its patch features (what the memory bank holds)."""
    spec = encoder.spec
    local = ImageEncoder(encoder.visual, EncoderSpec(spec.parts, spec.stages[:n_stages], spec.pool)).eval()
    return int(local(torch.zeros(1, 3, image_size, image_size, device=next(encoder.parameters()).device)).shape[-1])


def fit_patchcore(ctx: AdaptContext, cfg: PatchCoreConfig | None = None) -> FitResult:
    cfg = cfg or PatchCoreConfig()
    b = ctx.backbone
    encoder = patch_encoder(ctx, cfg).to(ctx.device)
    normalize = PixelNormalizer(b.mean, b.std).to(ctx.device)
    train, val = ctx.split.train, ctx.split.val
    good_train = train.subset(np.flatnonzero(train.labels == 0))
    if not len(good_train):
        raise ValueError(f"patchcore needs training images of the good class '{ctx.classes[0]}'")

    def features_of(images) -> torch.Tensor:
        return patch_features(encoder, normalize, load_pixels(images, b.image_size, b.resize_mode, ctx.progress).to(ctx.device)).cpu()

    pixels = load_pixels(good_train, b.image_size, b.resize_mode, ctx.progress)
    if cfg.augment == "dihedral":
        pixels = dihedral(pixels)
    features = patch_features(encoder, normalize, pixels.to(ctx.device)).cpu()
    grid = round(features.shape[1] ** 0.5)
    dim = bank_dim(encoder, len(patch_stages(ctx, cfg)[0]), b.image_size)
    patches = features[..., :dim].flatten(0, 1)
    n_bank = max(1, min(cfg.max_bank, round(cfg.coreset_fraction * len(patches))))
    keep = greedy_coreset(patches, n_bank, cfg.seed)
    logger.info("patchcore: memory bank of %d of %d good patches (dim %d, grid %dx%d)", len(keep), len(patches), patches.shape[1], grid, grid)
    top_k = max(1, round(cfg.top_fraction * grid * grid))
    head = PatchCoreHead(patches[keep], threshold=0.0, scale=1.0, grid=grid, top_k=top_k)

    extra_val = train.subset(np.flatnonzero(train.labels != 0))  # defect images in train (never in the bank)
    val_images = [s for s in (val, extra_val) if len(s)]
    if not sum(len(s) for s in val_images):
        raise ValueError("patchcore needs validation images to choose its threshold (--val-shots >= 2)")
    val_features = torch.cat([features_of(s) for s in val_images])
    defective = np.concatenate([s.labels != 0 for s in val_images])
    if (~defective).sum() < 2:
        raise ValueError("patchcore needs at least 2 good validation images (--val-shots >= 2)")
    val_scores = image_scores(head, val_features)
    chosen, val_auc = cfg.combine, {}
    if cfg.combine != "local":
        image_bank, whiten = fit_image_bank(image_stats(features, cfg.image_stats), cfg.image_score)

        def combined_head(rule: str, norm=(0.0, 1.0, 0.0, 1.0)) -> PatchCoreHead:
            return PatchCoreHead(patches[keep], 0.0, 1.0, grid, top_k, combine=rule, stats=cfg.image_stats, image_bank=image_bank, image_whiten=whiten, norm=norm)

        image_val = combined_head("image").image_distance(val_features).numpy()
        norm = (*standardise(val_scores[~defective]), *standardise(image_val[~defective]))
        if cfg.combine == AUTO:
            chosen, val_auc = choose_combine({c: combined_head(c, norm) for c in AUTO_CANDIDATES}, val_scores, val_features, defective)
        if chosen == "local":  # the patch-score model: the image statistics' level is dropped from the encoder
            n_stages = len(patch_stages(ctx, cfg)[0])
            encoder = ImageEncoder(encoder.visual, EncoderSpec(encoder.spec.parts, encoder.spec.stages[:n_stages], encoder.spec.pool))
        else:
            head = combined_head(chosen, norm)
            val_scores = image_scores(head, val_features)
    good_scores = val_scores[~defective]
    good_only = cfg.threshold_rule == "good_quantile" or not defective.any()
    head.threshold = choose_threshold(val_scores, defective, cfg.good_quantile, good_only=good_only)
    head.scale = float(max(good_scores.std(), 1e-3 * max(abs(head.threshold), 1e-6)))
    head.map_threshold = head.threshold if chosen == "local" else head.norm[0] + head.threshold * head.norm[1]  # the patch score alone at the threshold
    params = {
        "stages": list(encoder.spec.stages), "pool": cfg.pool, "augment": cfg.augment, "bank_size": len(keep), "good_patches": len(patches),
        "feature_dim": int(patches.shape[1]), "grid": grid, "top_k": top_k, "threshold": head.threshold, "scale": head.scale,
        "threshold_rule": f"good_quantile_{cfg.good_quantile}" if good_only else "val_balanced_accuracy",
        "combine": chosen, "combine_rule": cfg.combine, "map_threshold": head.map_threshold,
        "score": score_name(cfg, patch_stages(ctx, cfg)[1], chosen, val_auc),
    }
    if val_auc:
        params["combine_val_auc"] = val_auc
    if chosen != "local":
        params.update(image_score=cfg.image_score, image_stats=cfg.image_stats, image_bank_size=int(head.image_bank.shape[0]),
                      image_dim=int(head.image_bank.shape[1]), score_norm=list(head.norm))
    logger.info("patchcore: score %s, threshold %.4g (%s)", params["score"], head.threshold, params["threshold_rule"])
    ctx.report({"val_good_score_mean": float(good_scores.mean()), "threshold": head.threshold}, 0)
    info = ctx.info(Method.PATCHCORE, params)
    info.labels = [ctx.classes[0], DEFECTIVE]
    info.anomaly_threshold = head.map_threshold
    clf = ImageClassifier(encoder.cpu(), head, info).eval()
    with torch.no_grad():
        z = torch.from_numpy((val_scores - head.threshold) / head.scale)
        val_probs = torch.softmax(torch.stack([torch.zeros_like(z), z], dim=1), dim=1).numpy()
    # val_probabilities follow ctx.split.val only (the pipeline's reject threshold pairs them with its labels)
    return FitResult(clf, params=params, val_probabilities=val_probs[: len(val)] if len(val) else None)
