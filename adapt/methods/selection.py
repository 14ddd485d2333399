"""Choosing a method from a few labelled images: repeated stratified k-fold (``--method auto``).

One validation split of 16 images per class is too noisy to choose with (seed to seed the
balanced accuracy moves by +-5 points), so every candidate is scored by sklearn's
``RepeatedStratifiedKFold`` over *all* labelled few-shot images (the split's train + val). In each
outer fold the candidate runs exactly as it will on the final split -- fit on one half of the
fold's training images, make its own choices (C, epochs, cache weights) on the other half -- and
is scored on the fold's held-out images with the classifier it returns. All candidates see the
same folds, so they are compared pairwise on the folds they all finished.

Rule: candidates run repeat by repeat, cheapest (simplest) first, while the time budget lasts (a
slow one may finish only part of a repeat; fold order is fixed, so any two candidates share their
first folds). The simplest is kept unless a later one beats it by more than one standard error of
their paired differences on the folds both finished -- on a single shared fold, by anything; the
winner of that duel then faces the next. One that finishes no fold in time is left out and said so. The out-of-fold probabilities of the winner are kept: they
estimate the reject threshold on held-out images (``adapt.core.evaluation``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from adapt.data.fewshot import FewShotSplit
from adapt.data.images import ImageSet
from adapt.methods.base import AdaptContext
from adapt.methods.registry import MethodSpec

logger = logging.getLogger(__name__)

MIN_FOLDS = 1  # folds a candidate must finish to be compared (with the others, on the folds both finished)


@dataclass
class CVResult:
    """One candidate's cross-validation: balanced accuracy per outer fold, in fold order."""

    method: str
    scores: list[float] = field(default_factory=list)
    seconds: float = 0.0
    oof: np.ndarray | None = None  # summed out-of-fold probabilities per pool image
    oof_count: np.ndarray | None = None
    skipped: str = ""  # why it took no part in the comparison

    @property
    def used(self) -> np.ndarray:
        return np.asarray(self.scores, dtype=float)

    @property
    def mean(self) -> float:
        return float(self.used.mean()) if len(self.used) else float("nan")

    @property
    def std(self) -> float:
        return float(self.used.std(ddof=1)) if len(self.used) > 1 else 0.0

    def out_of_fold(self) -> np.ndarray | None:
        """Mean out-of-fold probabilities of each pool image (None where no fold held it out)."""
        if self.oof is None or not self.oof_count.all():
            return None
        return self.oof / self.oof_count[:, None]


@dataclass
class Selection:
    choice: str
    reason: str
    results: list[CVResult]
    folds: int
    repeats: float  # folds compared / k (a fraction when a slow candidate finished part of a repeat)
    pool: ImageSet

    def runners_up(self) -> list[CVResult]:
        ranked = sorted((r for r in self.results if not r.skipped), key=lambda r: -r.mean)
        return [r for r in ranked if r.method != self.choice]

    def result(self, method: str) -> CVResult:
        return next(r for r in self.results if r.method == method)

    def params(self) -> dict:
        """What MLflow records as params: the candidates, the choice, the CV design."""
        return {"auto.choice": self.choice, "auto.candidates": ",".join(r.method for r in self.results),
                "auto.cv": f"repeated {self.folds}-fold over {len(self.pool)} labelled images", "auto.reason": self.reason}

    def metrics(self) -> dict[str, float]:
        out = {}
        for r in self.results:
            out[f"cv/{r.method}/seconds"] = r.seconds
            if not r.skipped:
                out.update({f"cv/{r.method}/balanced_accuracy_mean": r.mean, f"cv/{r.method}/balanced_accuracy_std": r.std,
                            f"cv/{r.method}/folds": float(len(r.used))})
        return out


def labelled_pool(split: FewShotSplit) -> ImageSet:
    """The split's train and val images as one set (both are subsets of the same train pool)."""
    a, b = split.train, split.val
    return ImageSet(a.keys + b.keys, np.concatenate([a.labels, b.labels]), a.classes, a.root, a.loader, a.digest)


def cv_folds(labels: np.ndarray, folds: int, repeats: int, seed: int) -> tuple[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """``(k, [(fit, choose, held_out), ...])``: outer folds of RepeatedStratifiedKFold, each
    training part halved (stratified) into images to fit on and images to choose with."""
    from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold

    counts = np.bincount(labels)
    k = int(min(folds, counts[counts > 0].min()))
    if k < 2:
        raise ValueError("cross-validation needs at least 2 labelled images per class (--shots 1 gives 1 + 1)")
    out = []
    outer = RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed)
    for i, (train, held) in enumerate(outer.split(np.zeros(len(labels)), labels)):
        inner_counts = np.bincount(labels[train])
        if inner_counts[inner_counts > 0].min() >= 2:
            fit_part, choose_part = next(StratifiedKFold(2, shuffle=True, random_state=seed + i).split(train, labels[train]))
            out.append((train[fit_part], train[choose_part], held))
        else:  # too few to halve: fit on all of them, no choosing images
            out.append((train, train[:0], held))
    return k, out


@torch.no_grad()
def _probabilities(classifier, pixels: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    classifier.eval()
    return torch.cat([classifier(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]).float().numpy()


def _balanced_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(labels, probs.argmax(axis=1)))


def cross_validate_methods(
    candidates: list[tuple[MethodSpec, object]],
    ctx: AdaptContext,
    budget_s: float,
    folds: int = 4,
    repeats: int = 5,
    seed: int = 0,
) -> Selection:
    """Score ``candidates`` ``[(spec, config)]`` by repeated stratified k-fold over the labelled
    images of ``ctx.split`` within ``budget_s`` seconds; ``ctx`` should be quiet (no loggers)."""
    from adapt.core.features import load_pixels

    pool = labelled_pool(ctx.split)
    k, splits = cv_folds(pool.labels, folds, repeats, seed)
    b = ctx.backbone
    pixels = load_pixels(pool, b.image_size, b.resize_mode, progress=False)
    n_classes = len(pool.classes)
    results = [CVResult(spec.name, oof=np.zeros((len(pool), n_classes)), oof_count=np.zeros(len(pool))) for spec, _ in candidates]
    deadline = time.monotonic() + budget_s
    for r in range(repeats):
        for (spec, config), res in zip(candidates, results):
            if res.skipped or len(res.scores) < r * k:
                continue
            per_fold = res.seconds / len(res.scores) if res.scores else 0.0
            if r and time.monotonic() + per_fold * k > deadline:
                continue  # no time for another whole repeat of this one
            for fit_idx, choose_idx, held in splits[r * k : (r + 1) * k]:
                if r == 0 and res.scores and time.monotonic() + per_fold > deadline:
                    if len(res.scores) < MIN_FOLDS:
                        res.skipped = f"not enough time: {len(res.scores)} of {k} folds in the budget ({per_fold:.0f} s a fold)"
                    break
                t = time.perf_counter()
                split = FewShotSplit(pool.subset(fit_idx), pool.subset(choose_idx), len(fit_idx) // n_classes, seed)
                try:
                    fitted = spec.fit(dataclasses.replace(ctx, split=split), config)
                except ValueError as exc:  # e.g. a method that cannot run on this data
                    res.skipped = f"failed: {exc}"
                    break
                probs = fitted.predict(pool.subset(held)) if fitted.predict is not None else _probabilities(fitted.classifier, pixels[held])
                if probs.shape[1] != n_classes:
                    res.skipped = f"predicts {probs.shape[1]} classes, the data has {n_classes}"
                    break
                res.scores.append(_balanced_accuracy(probs, pool.labels[held]))
                res.oof[held] += probs
                res.oof_count[held] += 1
                res.seconds += time.perf_counter() - t
                per_fold = res.seconds / len(res.scores)
                logger.info("cv %s fold %d: balanced accuracy %.3f (%.1f s)", spec.name, len(res.scores), res.scores[-1], time.perf_counter() - t)
    for res in results:
        if not res.skipped and len(res.scores) < MIN_FOLDS:
            res.skipped = f"not enough time: {len(res.scores)} of {k} folds in the budget"
    compared = [res for res in results if not res.skipped]
    if not compared:
        raise ValueError(f"no candidate finished {MIN_FOLDS} cross-validation folds in {budget_s:.0f} s: raise --budget-minutes or name a --method")
    choice, reason = _choose(compared)
    return Selection(choice.method, reason, results, k, len(choice.scores) / k, pool)


def _choose(compared: list[CVResult]) -> tuple[CVResult, str]:
    """The simplest candidate first; a later one replaces it only when it is better by more than one
    standard error of their paired differences on the folds both finished (on a single fold: better)."""
    incumbent, reason = compared[0], f"first candidate ({compared[0].mean:.1%} over {len(compared[0].used)} folds)"
    for res in compared[1:]:
        n = min(len(incumbent.scores), len(res.scores))
        diff = np.asarray(res.scores[:n]) - np.asarray(incumbent.scores[:n])
        se = diff.std(ddof=1) / np.sqrt(n) if n > 1 else 0.0
        if diff.mean() > se:
            reason = f"beat {incumbent.method} by {diff.mean():.1%} (> one standard error, {se:.1%}) on the {n} folds both ran"
            incumbent = res
    if incumbent is compared[0] and len(compared) > 1:
        reason = f"no other candidate beat it by more than one standard error on the same folds ({incumbent.mean:.1%} over {len(incumbent.used)} folds)"
    return incumbent, reason
