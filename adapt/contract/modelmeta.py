"""Metadata carried inside every exported classifier (the ONNX ``metadata_props``).

The exported model is the one contract between training and serving: an ONNX graph whose
input ``pixels`` is ``uint8[N, H, W, 3]`` (RGB, already resized by ``adapt.contract.imageio``) and whose
output ``probabilities`` is ``float32[N, C]``. Everything else a server or client needs to use
it travels in the file as the string key/values defined here. Torch-free on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
HEATMAP_NAME = "anomaly_map"  # optional second output float32[N, h, w] (anomaly models): where the defect is
METADATA_KEY = "adapt.classifier"  # JSON of ClassifierMetadata
FORMAT_VERSION = 1


@dataclass
class ClassifierMetadata:
    """What a consumer of an exported classifier needs besides the graph."""

    labels: list[str]  # class names, index i <-> probabilities[:, i]
    image_size: int  # the graph's H == W
    resize_mode: str = "shortest"  # adapt.contract.imageio.ResizeMode value
    reject_threshold: float = 0.0  # top probability below this -> needs_review
    model_name: str = ""
    model_version: str = ""
    method: str = ""  # adaptation method that produced it (informational)
    backbone: str = ""  # backbone architecture + weights (informational)
    mean: list[float] = field(default_factory=list)  # normalisation done inside the graph
    std: list[float] = field(default_factory=list)
    # Anomaly models (output ``anomaly_map``): the patch score at the decision threshold, for overlays.
    anomaly_threshold: float = 0.0
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("a classifier needs at least one label")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"duplicate labels: {self.labels}")
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if not 0.0 <= self.reject_threshold <= 1.0:
            raise ValueError(f"reject_threshold must be in [0, 1], got {self.reject_threshold}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ClassifierMetadata":
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class MetadataError(ValueError):
    """The ONNX file carries no (or no valid) adapt classifier metadata."""


def from_props(props: Mapping[str, str], where: str = "the ONNX model") -> ClassifierMetadata:
    """The metadata from an ONNX model's key/value ``metadata_props``."""
    if METADATA_KEY not in props:
        raise MetadataError(f"{where}: no '{METADATA_KEY}' metadata; not a classifier exported by adapt")
    try:
        return ClassifierMetadata.from_json(props[METADATA_KEY])
    except (ValueError, TypeError) as exc:
        raise MetadataError(f"{where}: invalid '{METADATA_KEY}' metadata ({exc})") from exc


def read_session(session, where: str = "the ONNX model") -> ClassifierMetadata:
    """The metadata of an ``onnxruntime.InferenceSession``'s model."""
    return from_props(session.get_modelmeta().custom_metadata_map, where)


def read_file(path) -> ClassifierMetadata:
    """The metadata of an ``.onnx`` file, read with ``onnx`` (no session, no weights loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return from_props({p.key: p.value for p in model.metadata_props}, str(path))


def ort_providers() -> list[str]:
    """ONNX Runtime execution providers to ask for: CUDA first when this onnxruntime build has it, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
