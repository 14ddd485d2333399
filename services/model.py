"""An exported classifier loaded in ONNX Runtime: metadata, preprocessing and batched inference.

The file format is ``adapt.contract.modelmeta``'s contract: input ``pixels`` uint8[N, H, W, 3], output
``probabilities`` float32[N, C], the ``ClassifierMetadata`` JSON in the model's metadata_props.
Preprocessing is ``adapt.contract.imageio.bytes_to_model_pixels`` with the model's own size and resize
mode, i.e. exactly what training and evaluation do.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from adapt.contract.imageio import bytes_to_model_pixels
from adapt.contract.modelmeta import (
    HEATMAP_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    ClassifierMetadata,
    MetadataError,
    ort_providers,
    read_session,
)
from adapt.errors import first_line

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The file is not an exported classifier this server can run."""


@dataclass(frozen=True)
class RuntimeConfig:
    """How ONNX Runtime runs the model."""

    intra_op_threads: int = 0  # threads inside one inference; 0 = ONNX Runtime's default (all cores)
    providers: tuple[str, ...] = ()  # empty = CUDA first when available, else CPU
    # ONNX Runtime's pool threads busy-waiting for work: "off" (idle threads sleep at once), "run"
    # (spin only while an inference runs) or "on" (ORT's default: also keep spinning after a run).
    # Not "on" here: the server decodes requests in other threads on the same cores, and threads
    # that keep spinning take their CPU (experiments/serving: ~1.8x throughput and 4x lower p99
    # than "on" on a shared 2-core box).
    spin: str = "off"

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0, got {self.intra_op_threads}")
        if self.spin not in SPIN_MODES:
            raise ValueError(f"spin must be one of {', '.join(SPIN_MODES)}, got {self.spin!r}")


SPIN_MODES = ("off", "run", "on")


class OnnxClassifier:
    """One loaded version of a classifier. Immutable after construction; thread-safe to run."""

    def __init__(
        self, path: str | Path, runtime: RuntimeConfig = RuntimeConfig(), *, name: str = "", version: str = ""
    ):
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = runtime.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if runtime.spin == "off":
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif runtime.spin == "run":
            options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self._session = ort.InferenceSession(
                str(self.path), options, providers=list(runtime.providers) or ort_providers()
            )
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelLoadError(f"{self.path}: cannot load ONNX model ({first_line(exc)})") from exc
        try:
            self.metadata = read_session(self._session, str(self.path))
        except MetadataError as exc:
            raise ModelLoadError(str(exc)) from exc
        _check_signature(self._session, self.metadata, self.path)
        self.name = name or self.metadata.model_name or self.path.stem
        self.version = version or self.metadata.model_version or _file_digest(self.path)
        self.loaded_at = time.time()
        self.providers = tuple(self._session.get_providers())
        self.has_heatmap = HEATMAP_NAME in {o.name for o in self._session.get_outputs()}

    @property
    def labels(self) -> list[str]:
        return self.metadata.labels

    def preprocess(self, data: bytes) -> np.ndarray:
        """Encoded image bytes -> ``uint8[H, W, 3]`` model input (raises ``ImageDecodeError``)."""
        return bytes_to_model_pixels(data, self.metadata.image_size, self.metadata.resize_mode)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """``uint8[N, H, W, 3]`` -> ``float32[N, C]`` class probabilities."""
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]

    def predict_with_heatmap(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``uint8[N, H, W, 3]`` -> (probabilities ``float32[N, C]``, anomaly map ``float32[N, h, w]``);
        only for models with ``has_heatmap``."""
        probabilities, heatmap = self._session.run([OUTPUT_NAME, HEATMAP_NAME], {INPUT_NAME: pixels})
        return probabilities, heatmap

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run once per batch size so the first real requests don't pay for allocations."""
        size = self.metadata.image_size
        for n in batch_sizes:
            self.predict(np.zeros((n, size, size, 3), dtype=np.uint8))

    def __repr__(self) -> str:
        return f"OnnxClassifier(name={self.name!r}, version={self.version!r}, path='{self.path}')"


def _check_signature(session: ort.InferenceSession, meta: ClassifierMetadata, path: Path) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if set(inputs) != {INPUT_NAME} or OUTPUT_NAME not in outputs:
        raise ModelLoadError(
            f"{path}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', "
            f"found inputs {sorted(inputs)} and outputs {sorted(outputs)}"
        )
    pixels = inputs[INPUT_NAME]
    if pixels.type != "tensor(uint8)" or len(pixels.shape) != 4:
        raise ModelLoadError(
            f"{path}: input '{INPUT_NAME}' must be uint8[N, H, W, 3], found {pixels.type} {pixels.shape}"
        )
    for dim, want in zip(pixels.shape[1:], (meta.image_size, meta.image_size, 3), strict=True):
        if isinstance(dim, int) and dim != want:  # symbolic dims are accepted as they are
            raise ModelLoadError(
                f"{path}: input shape {pixels.shape} does not match image_size {meta.image_size} in the metadata"
            )


def _file_digest(path: Path) -> str:
    """A short content hash: the version of a model file that records none."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:12]

