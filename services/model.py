"""An exported classifier as the service holds it: the contract's ``OnnxRunner`` plus a name,
a version and the request preprocessing.

The file format is ``adapt.contract.modelmeta``'s contract: input ``pixels`` uint8[N, H, W, 3], output
``probabilities`` float32[N, C], the ``ClassifierMetadata`` JSON in the model's metadata_props.
Preprocessing is ``adapt.contract.imageio.bytes_to_model_pixels`` with the model's own size and resize
mode, i.e. exactly what training and evaluation do.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from adapt.contract.digest import file_sha256
from adapt.contract.imageio import bytes_to_model_pixels
from adapt.contract.runtime import SPIN_MODES, ModelLoadError, OnnxRunner, RuntimeConfig

__all__ = ["SPIN_MODES", "ModelLoadError", "OnnxClassifier", "RuntimeConfig"]

logger = logging.getLogger(__name__)


class OnnxClassifier(OnnxRunner):
    """One loaded version of a classifier. Immutable after construction; thread-safe to run."""

    def __init__(
        self, path: str | Path, runtime: RuntimeConfig = RuntimeConfig(), *, name: str = "", version: str = ""
    ):
        super().__init__(path, runtime)
        self.name = name or self.metadata.model_name or self.path.stem
        self.version = version or self.metadata.model_version or file_sha256(self.path)[:12]
        self.loaded_at = time.time()

    def preprocess(self, data: bytes) -> np.ndarray:
        """Encoded image bytes -> ``uint8[H, W, 3]`` model input (raises ``ImageDecodeError``)."""
        return bytes_to_model_pixels(data, self.metadata.image_size, self.metadata.resize_mode)

    def __repr__(self) -> str:
        return f"OnnxClassifier(name={self.name!r}, version={self.version!r}, path='{self.path}')"
