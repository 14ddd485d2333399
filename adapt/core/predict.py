"""Run an exported ONNX classifier over an ``ImageSet`` with the contract's ``OnnxRunner``, the
runner the service uses (evaluation measures exactly what is served)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adapt.contract.modelmeta import ClassifierMetadata
from adapt.contract.runtime import OnnxRunner, RuntimeConfig
from adapt.core.decoding import pixel_batches, with_progress
from adapt.data.images import ImageSet
from adapt.errors import DataError


def predict_onnx(
    path: str | Path, images: ImageSet, meta: ClassifierMetadata, batch_size: int = 64, progress: bool = True, threads: int = 0
) -> np.ndarray:
    """Probabilities ``[N, C]`` in the model's label order; images decoded in a thread pool while
    ONNX Runtime runs the batch before (``adapt.core.decoding``)."""
    runner = OnnxRunner(path, RuntimeConfig(intra_op_threads=threads))
    batches = pixel_batches(images, meta.image_size, meta.resize_mode, batch_size)
    return runner.predict_batches(with_progress(batches, len(images), batch_size, "evaluating", progress))


def align_labels(images: ImageSet, meta: ClassifierMetadata) -> np.ndarray:
    """The dataset's labels as indices into the model's label list (by name)."""
    unknown = [c for c in images.classes if c not in meta.labels]
    present = {images.classes[i] for i in np.unique(images.labels)}
    if unknown and present & set(unknown):
        raise DataError(f"the data has class(es) {sorted(present & set(unknown))} that the model does not know (model labels: {meta.labels})")
    mapping = np.array([meta.labels.index(c) if c in meta.labels else -1 for c in images.classes])
    return mapping[images.labels]
