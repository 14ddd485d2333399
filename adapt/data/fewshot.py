"""Seeded K-shot sampling with a few-shot validation split, both drawn from the train pool."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from adapt.data.images import ImageSet
from adapt.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FewShotSplit:
    """K labelled images per class to fit on, and a disjoint validation set to choose with."""

    train: ImageSet
    val: ImageSet
    shots: int
    seed: int


def few_shot_split(pool: ImageSet, shots: int, seed: int, val_shots: int | None = None) -> FewShotSplit:
    """Draw ``shots`` images per class for training and up to ``val_shots`` (default: ``shots``,
    at least 2) more per class for validation, without replacement, deterministically in ``seed``.

    A class with fewer than ``shots`` images is an error naming the class. Validation takes what
    is left, up to ``val_shots``; a class with nothing left for validation is logged.
    """
    if shots < 1:
        raise DataError(f"shots must be >= 1, got {shots}")
    val_shots = max(shots, 2) if val_shots is None else val_shots
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c, name in enumerate(pool.classes):
        members = np.flatnonzero(pool.labels == c)
        if len(members) < shots:
            raise DataError(
                f"class '{name}' has {len(members)} training image(s), fewer than --shots {shots}; "
                f"add images or lower --shots"
            )
        order = rng.permutation(members)
        train_idx.extend(order[:shots].tolist())
        rest = order[shots : shots + val_shots]
        if len(rest) < val_shots:
            logger.warning("class '%s': only %d image(s) left for validation (wanted %d)", name, len(rest), val_shots)
        val_idx.extend(rest.tolist())
    return FewShotSplit(pool.subset(sorted(train_idx)), pool.subset(sorted(val_idx)), shots, seed)
