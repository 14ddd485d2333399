"""Run an exported ONNX classifier over an ``ImageSet`` with the contract's ``OnnxRunner``, the
runner the service uses (evaluation measures exactly what is served)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from adapt.data.images import ImageSet
from adapt.errors import DataError
from adapt.contract.imageio import ImageDecodeError, to_model_pixels
from adapt.contract.modelmeta import ClassifierMetadata
from adapt.contract.runtime import OnnxRunner, RuntimeConfig


def predict_onnx(
    path: str | Path, images: ImageSet, meta: ClassifierMetadata, batch_size: int = 64, progress: bool = True, threads: int = 0
) -> np.ndarray:
    """Probabilities ``[N, C]`` in the model's label order."""
    runner = OnnxRunner(path, RuntimeConfig(intra_op_threads=threads))

    def batches():
        for start in tqdm(range(0, len(images), batch_size), desc="evaluating", disable=not progress, leave=False, unit="batch"):
            yield np.stack([_pixels(images, i, meta) for i in range(start, min(start + batch_size, len(images)))])

    return runner.predict_batches(batches())


def _pixels(images: ImageSet, i: int, meta: ClassifierMetadata) -> np.ndarray:
    try:
        img = images.load(i)
    except ImageDecodeError as exc:
        raise DataError(str(exc)) from exc
    return to_model_pixels(img, meta.image_size, meta.resize_mode)


def align_labels(images: ImageSet, meta: ClassifierMetadata) -> np.ndarray:
    """The dataset's labels as indices into the model's label list (by name)."""
    unknown = [c for c in images.classes if c not in meta.labels]
    present = {images.classes[i] for i in np.unique(images.labels)}
    if unknown and present & set(unknown):
        raise DataError(f"the data has class(es) {sorted(present & set(unknown))} that the model does not know (model labels: {meta.labels})")
    mapping = np.array([meta.labels.index(c) if c in meta.labels else -1 for c in images.classes])
    return mapping[images.labels]
