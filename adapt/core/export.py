"""Export an ``ImageClassifier`` to one ONNX graph (uint8 pixels in, probabilities out) and check it.

The graph's input is ``pixels: uint8[N, H, W, 3]`` with a dynamic batch axis; normalisation is
inside the graph; labels, input size, resize rule, reject threshold and model identity travel
in the model's metadata (``adapt.contract.modelmeta``). ``check_parity`` compares ONNX Runtime against
the torch classifier on random images; an export compares the whole graph against the torch head on
its encoder graph's features (that graph was checked against the torch encoder when it was cached).

The file is self-contained, composed from the classifier's encoder graph (exported once per trunk
and cached) and its head (exported per call): ``adapt.core.graphs``.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import numpy as np
import onnx
import torch

from adapt.core.classifier import ImageClassifier
from adapt.core.graphs import EncoderGraph, HeadGraph, compose_classifier, encoder_runner
from adapt.errors import AdaptError
from adapt.contract.modelmeta import METADATA_KEY, ClassifierMetadata
from adapt.contract.runtime import OnnxRunner, RuntimeConfig

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4


def export_onnx(
    classifier: ImageClassifier,
    path: str | Path,
    *,
    model_name: str = "",
    model_version: str = "",
    check: bool = True,
) -> Path:
    """Write ``classifier`` as ONNX to ``path`` (atomically) and, by default, verify parity first
    (``AdaptError`` and nothing written when ONNX Runtime and torch disagree)."""
    return export_checked(classifier, path, model_name=model_name, model_version=model_version, check=check)[0]


def export_checked(
    classifier: ImageClassifier,
    path: str | Path,
    *,
    model_name: str = "",
    model_version: str = "",
    check: bool = True,
) -> tuple[Path, float | None]:
    """``export_onnx`` that also returns the parity check's max |p_onnx - p_torch| (None unchecked)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    classifier = copy.deepcopy(classifier).eval().cpu()  # the caller's model stays where it is
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    model = compose_classifier(classifier)  # the cached encoder graph + this head (adapt.core.graphs)
    set_metadata(model, classifier.info.metadata(model_name, model_version))
    err = None
    try:
        onnx.save_model(model, tmp)
        if check:  # on the temporary file: a graph that fails never replaces the model at ``path``
            err = check_parity(classifier, tmp, reference="encoder-graph")
            logger.info("exported %s (ONNX Runtime vs torch: max |dp| = %.2e)", path, err)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, err


def set_metadata(model: onnx.ModelProto, metadata: ClassifierMetadata) -> None:
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    model.metadata_props.add(key=METADATA_KEY, value=metadata.to_json())
    model.producer_name = "adapt"


def ort_session(path: str | Path, threads: int = 0):
    """The ONNX Runtime session of an exported model, with the contract runner's options."""
    return OnnxRunner(path, RuntimeConfig(intra_op_threads=threads)).session


def check_parity(classifier: ImageClassifier, path: str | Path, n: int = 4, seed: int = 0, tolerance: float = PARITY_TOLERANCE,
                 reference: str = "torch") -> float:
    """Max absolute probability difference between ONNX Runtime and torch on random images;
    raises ``AdaptError`` above ``tolerance``.

    ``reference="torch"`` runs the whole torch classifier. ``"encoder-graph"`` runs the torch head
    on the features of the classifier's cached encoder graph (``adapt.core.graphs``), which was
    checked against the torch encoder when it was cached, under a key of the encoder's weights and
    spec: this checks the exported head and the composition without a torch forward of the trunk
    (the slowest part of a retrain's export, and the whole trunk on every test-time view)."""
    if reference not in ("torch", "encoder-graph"):
        raise ValueError(f"reference must be 'torch' or 'encoder-graph', got {reference!r}")
    size = classifier.info.image_size
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    on_cpu = all(t.device.type == "cpu" for t in classifier.parameters())
    cpu = classifier if on_cpu else copy.deepcopy(classifier).cpu()
    cpu.eval()
    with torch.no_grad():
        if reference == "torch":
            expected = cpu(torch.from_numpy(pixels)).numpy()
            expected_map = cpu.forward_with_map(torch.from_numpy(pixels))[1].numpy() if cpu.has_anomaly_map else None
        else:
            info = cpu.info
            features = encoder_runner(EncoderGraph.of(cpu), info.image_size, info.mean, info.std).predict(pixels)
            out = HeadGraph(cpu.head)(torch.from_numpy(features))
            expected, expected_map = (out[0].numpy(), out[1].numpy()) if cpu.has_anomaly_map else (out.numpy(), None)
    runner = OnnxRunner(path)
    got = runner.predict(pixels)
    err = float(np.abs(expected - got).max())
    if not err <= tolerance:
        raise AdaptError(f"ONNX export parity check failed: max |p_onnx - p_torch| = {err:.2e} > {tolerance:.0e}")
    if expected_map is not None:
        got_map = runner.predict_with_heatmap(pixels)[1]
        map_err = float(np.abs(expected_map - got_map).max() / max(1e-6, float(np.abs(expected_map).max())))
        if not map_err <= 1e-3:
            raise AdaptError(f"ONNX export parity check failed: anomaly map differs by {map_err:.2e} of its range (> 1e-3)")
    return err
