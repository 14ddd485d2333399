"""Anomaly mode's data: K good images to learn from, every other class only for validation and testing.

``anomaly_split`` turns a labelled dataset into the binary task ``[good, "defective"]``: the
few-shot train split holds ``shots`` images of the good class only; the validation split holds
``val_shots`` more good images and up to ``val_shots`` images of each other class from the train
pool (to choose the decision threshold); the held-out test split is the dataset's, relabelled.
The original class of every test image is kept (``test_kinds``) for per-defect-class recall.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from adapt.data.fewshot import FewShotSplit
from adapt.data.images import DatasetSplits, ImageSet
from adapt.errors import DataError

logger = logging.getLogger(__name__)

DEFECTIVE = "defective"


@dataclass(frozen=True)
class AnomalySplit:
    data: DatasetSplits  # binary: classes (good, "defective")
    split: FewShotSplit  # train: good only; val: good + the other classes as "defective"
    good_label: str
    defect_classes: tuple[str, ...]  # the dataset's other classes (empty: a folder of good images only)
    test_kinds: tuple[str, ...]  # original class name of each held-out test image


def binary(images: ImageSet, good: int) -> ImageSet:
    """``images`` relabelled: its class ``good`` -> 0, every other class -> 1 (``defective``)."""
    labels = (images.labels != good).astype(np.int64)
    return ImageSet(images.keys, labels, (images.classes[good], DEFECTIVE), images.root, images.loader, images.digest)


def anomaly_split(data: DatasetSplits, good_label: str, shots: int, seed: int, val_shots: int | None = None) -> AnomalySplit:
    if good_label not in data.classes:
        raise DataError(f"--good-label '{good_label}' is not a class of {data.name} (its classes: {list(data.classes)})")
    if good_label == DEFECTIVE:
        raise DataError(f"--good-label cannot be '{DEFECTIVE}': that is the anomaly model's other label")
    good = data.classes.index(good_label)
    val_shots = max(shots, 2) if val_shots is None else val_shots
    rng = np.random.default_rng(seed)
    members = rng.permutation(np.flatnonzero(data.train.labels == good))
    if len(members) < shots:
        raise DataError(f"class '{good_label}' has {len(members)} training image(s), fewer than --shots {shots}; add images or lower --shots")
    train_idx = members[:shots].tolist()
    val_idx = members[shots : shots + val_shots].tolist()
    if len(val_idx) < 2:
        raise DataError(f"class '{good_label}' has {len(members)} training image(s): anomaly mode needs --shots {shots} plus at least 2 for validation")
    defect_classes = tuple(c for i, c in enumerate(data.classes) if i != good)
    for c in range(len(data.classes)):
        if c != good:
            val_idx.extend(rng.permutation(np.flatnonzero(data.train.labels == c))[:val_shots].tolist())
    if not defect_classes:
        logger.warning("%s has no class besides '%s': the threshold comes from good validation images only and the "
                       "held-out metrics cover good images only", data.name, good_label)
    pool = binary(data.train, good)
    split = FewShotSplit(pool.subset(sorted(train_idx)), pool.subset(sorted(val_idx)), shots, seed)
    test_kinds = tuple(data.classes[i] for i in data.test.labels)
    binary_data = DatasetSplits(data.name, binary(data.train, good), binary(data.test, good), {})
    return AnomalySplit(binary_data, split, good_label, defect_classes, test_kinds)


def anomaly_metrics(probs: np.ndarray, test_kinds: tuple[str, ...], good_label: str, threshold: float = 0.5) -> dict:
    """ROC-AUC (good vs all others), balanced accuracy at the model's decision threshold and the
    recall of each defect class on the held-out split (``probs[:, 1]``: probability of defective)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    kinds = np.asarray(test_kinds)
    y = (kinds != good_label).astype(int)
    p = np.asarray(probs, dtype=np.float64)[:, 1]
    flagged = p >= threshold
    out: dict = {"good_label": good_label, "good_recall": float((~flagged[y == 0]).mean()) if (y == 0).any() else float("nan")}
    if len(np.unique(y)) == 2:
        out["roc_auc"] = float(roc_auc_score(y, p))
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, flagged.astype(int)))
    out["defect_recall"] = {str(k): float(flagged[kinds == k].mean()) for k in sorted(set(kinds.tolist()) - {good_label})}
    return out
