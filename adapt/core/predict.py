"""Run an exported ONNX classifier over an ``ImageSet`` with the contract's ``OnnxRunner``, the
runner the service uses (evaluation measures exactly what is served), or, for a frozen-feature
model, its head on the cached features once the exported model has given the same answers on a
sample of the images (``predict_exported``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from adapt.contract.modelmeta import ClassifierMetadata
from adapt.contract.runtime import OnnxRunner, RuntimeConfig
from adapt.core.decoding import pixel_batches, with_progress
from adapt.data.images import ImageSet
from adapt.errors import DataError

logger = logging.getLogger(__name__)


def predict_onnx(
    path: str | Path, images: ImageSet, meta: ClassifierMetadata, batch_size: int = 64, progress: bool = True, threads: int = 0
) -> np.ndarray:
    """Probabilities ``[N, C]`` in the model's label order; images decoded in a thread pool while
    ONNX Runtime runs the batch before (``adapt.core.decoding``)."""
    runner = OnnxRunner(path, RuntimeConfig(intra_op_threads=threads))
    batches = pixel_batches(images, meta.image_size, meta.resize_mode, batch_size)
    return runner.predict_batches(with_progress(batches, len(images), batch_size, "evaluating", progress))


def predict_exported(
    path: str | Path, images: ImageSet, meta: ClassifierMetadata, shortcut: Callable[[ImageSet], np.ndarray] | None, *,
    tolerance: float, check: int = 16, batch_size: int = 64, progress: bool = True, threads: int = 0,
) -> tuple[np.ndarray, dict]:
    """The exported model's probabilities on ``images`` and how they were obtained.

    ``shortcut(images)`` is a faster route to the same numbers: a frozen-feature method's head on
    the features cached for those images (its encoder is the cached encoder graph, so a second
    retrain on the same data decodes only the checked images). It is used only after the exported model itself
    gave the same probabilities, within ``tolerance``, on ``check`` images spread over the set;
    otherwise, or without a shortcut, every image goes through the exported model."""
    if shortcut is not None and len(images):
        probs = np.asarray(shortcut(images), dtype=np.float64)
        idx = np.unique(np.linspace(0, len(images) - 1, min(check, len(images))).round().astype(int))
        direct = predict_onnx(path, images.subset(idx.tolist()), meta, batch_size, progress=False, threads=threads)
        if probs.shape == (len(images), direct.shape[1]):
            err = float(np.abs(direct - probs[idx]).max())
            if err <= tolerance:
                return probs, {"route": "cached features", "checked_images": int(len(idx)), "max_abs_diff": err}
            logger.warning("cached features give probabilities %.1e away from the exported model's: evaluating every image with the model", err)
        else:
            logger.warning("the cached-feature shortcut gave shape %s, the model %s columns: evaluating every image with the model",
                           probs.shape, direct.shape[1])
    return predict_onnx(path, images, meta, batch_size, progress, threads), {"route": "exported model"}


def align_labels(images: ImageSet, meta: ClassifierMetadata) -> np.ndarray:
    """The dataset's labels as indices into the model's label list (by name)."""
    unknown = [c for c in images.classes if c not in meta.labels]
    present = {images.classes[i] for i in np.unique(images.labels)}
    if unknown and present & set(unknown):
        raise DataError(f"the data has class(es) {sorted(present & set(unknown))} that the model does not know (model labels: {meta.labels})")
    mapping = np.array([meta.labels.index(c) if c in meta.labels else -1 for c in images.classes])
    return mapping[images.labels]
