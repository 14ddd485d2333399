"""The one way an exported classifier is run: ONNX Runtime session options, the signature check,
batching and the optional anomaly map.

The service (``services.model``), the MLflow pyfunc (``adapt.tracking.pyfunc``), evaluation
(``adapt.core.predict``) and the export parity check (``adapt.core.export``) all load models
through ``OnnxRunner``, so evaluation measures exactly what is served. Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapt.contract.modelmeta import HEATMAP_NAME, INPUT_NAME, OUTPUT_NAME, ClassifierMetadata, MetadataError, ort_providers, read_session
from adapt.errors import AdaptError, first_line

SPIN_MODES = ("off", "run", "on")


class ModelLoadError(AdaptError, RuntimeError):
    """The file is not an exported classifier this product can run."""


@dataclass(frozen=True)
class RuntimeConfig:
    """How ONNX Runtime runs the model."""

    intra_op_threads: int = 0  # threads inside one inference; 0 = ONNX Runtime's default (all cores)
    providers: tuple[str, ...] = ()  # empty = CUDA first when available, else CPU
    # ONNX Runtime's pool threads busy-waiting for work: "off" (idle threads sleep at once), "run"
    # (spin only while an inference runs) or "on" (ORT's default: also keep spinning after a run).
    # Not "on" here: a server decodes requests in other threads on the same cores, and threads
    # that keep spinning take their CPU (experiments/serving: ~1.8x throughput and 4x lower p99
    # than "on" on a shared 2-core box).
    spin: str = "off"

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0, got {self.intra_op_threads}")
        if self.spin not in SPIN_MODES:
            raise ValueError(f"spin must be one of {', '.join(SPIN_MODES)}, got {self.spin!r}")

    def session_options(self):
        """The ``onnxruntime.SessionOptions`` for this configuration."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.spin == "off":
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        elif self.spin == "run":
            options.add_session_config_entry("session.force_spinning_stop", "1")
        return options


class OnnxRunner:
    """An exported classifier loaded in ONNX Runtime, its metadata read and its signature checked.
    Immutable after construction; thread-safe to run.

    ``output`` is what ``predict`` returns: the classifier's ``probabilities`` (the default), or
    another output of a ``pixels``-in graph, such as the cached encoder graph's ``features``
    (``adapt.core.graphs``), which carries no classifier metadata (``metadata`` is None)."""

    def __init__(self, path: str | Path, runtime: RuntimeConfig = RuntimeConfig(), *, output: str = OUTPUT_NAME):
        import onnxruntime as ort

        self.path = Path(path)
        self.output = output
        try:
            self.session = ort.InferenceSession(
                str(self.path), runtime.session_options(), providers=list(runtime.providers) or ort_providers()
            )
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelLoadError(f"{self.path}: cannot load ONNX model ({first_line(exc)})") from exc
        try:
            self.metadata = read_session(self.session, str(self.path)) if output == OUTPUT_NAME else None
        except MetadataError as exc:
            raise ModelLoadError(str(exc)) from exc
        check_signature(self.session, self.metadata, self.path, output)
        self.providers = tuple(self.session.get_providers())
        self.has_heatmap = HEATMAP_NAME in {o.name for o in self.session.get_outputs()}

    @property
    def labels(self) -> list[str]:
        return self.metadata.labels if self.metadata else []

    def predict(self, pixels: np.ndarray, batch_size: int = 0) -> np.ndarray:
        """``uint8[N, H, W, 3]`` -> ``float32[N, C]`` class probabilities, ``batch_size`` images per
        run when it is positive (else all at once)."""
        if len(pixels) and (batch_size <= 0 or len(pixels) <= batch_size):
            return self.session.run([self.output], {INPUT_NAME: pixels})[0]  # the server's path: no copy
        return self.predict_batches(pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size or 1))

    def predict_batches(self, batches: Iterable[np.ndarray]) -> np.ndarray:
        """The probabilities of a stream of ``uint8[n, H, W, 3]`` batches, concatenated
        (``float32[0, C]`` when there is none)."""
        out = [self.session.run([self.output], {INPUT_NAME: batch})[0] for batch in batches]
        return np.concatenate(out) if out else np.empty((0, len(self.labels)), dtype=np.float32)

    def predict_with_heatmap(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``uint8[N, H, W, 3]`` -> (probabilities ``float32[N, C]``, anomaly map ``float32[N, h, w]``);
        only for models with ``has_heatmap``."""
        if not self.has_heatmap:
            raise ModelLoadError(f"{self.path}: the model has no '{HEATMAP_NAME}' output")
        probabilities, heatmap = self.session.run([OUTPUT_NAME, HEATMAP_NAME], {INPUT_NAME: pixels})
        return probabilities, heatmap

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run once per batch size so the first real requests don't pay for allocations."""
        size = self.metadata.image_size
        for n in batch_sizes:
            self.predict(np.zeros((n, size, size, 3), dtype=np.uint8))


def check_signature(session, meta: ClassifierMetadata | None, path: Path, output: str = OUTPUT_NAME) -> None:
    """Raise ``ModelLoadError`` unless the session takes ``pixels`` uint8[N, H, W, 3] at the
    metadata's image size (any size without metadata) and answers ``output``."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if set(inputs) != {INPUT_NAME} or output not in outputs:
        raise ModelLoadError(
            f"{path}: expected input '{INPUT_NAME}' and output '{output}', "
            f"found inputs {sorted(inputs)} and outputs {sorted(outputs)}"
        )
    pixels = inputs[INPUT_NAME]
    if pixels.type != "tensor(uint8)" or len(pixels.shape) != 4:
        raise ModelLoadError(
            f"{path}: input '{INPUT_NAME}' must be uint8[N, H, W, 3], found {pixels.type} {pixels.shape}"
        )
    size = meta.image_size if meta else None
    for dim, want in zip(pixels.shape[1:], (size, size, 3), strict=True):
        if isinstance(dim, int) and want is not None and dim != want:  # symbolic dims are accepted as they are
            raise ModelLoadError(
                f"{path}: input shape {pixels.shape} does not match image_size {meta.image_size} in the metadata"
            )
