"""Metadata carried inside every exported classifier (the ONNX ``metadata_props``).

The exported model is the one contract between training and serving: an ONNX graph whose
input ``pixels`` is ``uint8[N, H, W, 3]`` (RGB, already resized by ``adapt.imageio``) and whose
output ``probabilities`` is ``float32[N, C]``. Everything else a server or client needs to use
it travels in the file as the string key/values defined here. Torch-free on purpose.
"""

from __future__ import annotations

import json
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
    resize_mode: str = "shortest"  # adapt.imageio.ResizeMode value
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
