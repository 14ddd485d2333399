"""Encoder graphs: a classifier's trunk as ONNX, exported once and cached; a head composed onto it.

Exporting an EfficientNet trunk with ``torch.onnx.export`` takes most of a retrain (tens of
seconds on a small CPU), yet a frozen-feature method (zero-shot, linear probe, Tip-Adapter,
CoOp) never changes it. So the graph is split where ``ImageClassifier`` splits:

- the *encoder graph*, ``pixels uint8[N, H, W, 3] -> features`` exactly as
  ``ImageClassifier.features`` computes them (normalise, encode, L2-normalise), exported once per
  trunk and cached under ``cache_dir()/graphs``, keyed by ``encoder_graph_key``: a content hash
  of the encoder's weights plus everything else that shapes the graph (encoder spec, image size,
  mean/std, opset, torch). A method that changed the trunk (LoRA merges its adapters into the
  weights) gets a new key and a new export; the frozen-feature extraction
  (``adapt.core.features``) runs the same cached graph;
- the *head graph*, ``features -> probabilities`` (and ``anomaly_map`` for heads that have one),
  exported per retrain (milliseconds of graph) and joined to the encoder graph with
  ``onnx.compose`` into the one self-contained model the service loads (``adapt.core.export``).

A cached graph is checked against torch when it is exported (never cached when ONNX Runtime
disagrees), written atomically (concurrent processes may race for the same key) and an unreadable
one counts as a miss. The least recently used graphs beyond ``MAX_CACHED_GRAPHS`` are removed.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import compose
from torch import nn

from adapt.contract.modelmeta import HEATMAP_NAME, INPUT_NAME, OUTPUT_NAME
from adapt.contract.runtime import ModelLoadError, OnnxRunner, RuntimeConfig
from adapt.core.classifier import ImageClassifier, PixelNormalizer
from adapt.core.encoders import ImageEncoder
from adapt.defaults import cache_dir
from adapt.errors import AdaptError

logger = logging.getLogger(__name__)

OPSET = 18
FEATURES_NAME = "features"  # the encoder graph's output, the head graph's input
GRAPH_FORMAT = 2  # bump when what an encoder graph computes changes without its key noticing
MAX_CACHED_GRAPHS = 16  # about 18 MB each for EfficientNet-Lite0
ENCODER_TOLERANCE = 1e-4  # max |f_onnx - f_torch| on L2-normalised features
_BATCH = torch.export.Dim("batch", min=1, max=4096)


class EncoderGraph(nn.Module):
    """pixels ``[N, H, W, 3]`` -> features, exactly as ``ImageClassifier.features`` computes them."""

    def __init__(self, encoder: ImageEncoder, normalize: PixelNormalizer) -> None:
        super().__init__()
        self.encoder, self.normalize = encoder, normalize

    @classmethod
    def of(cls, classifier: ImageClassifier) -> "EncoderGraph":
        return cls(classifier.encoder, classifier.normalize)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return ImageClassifier.features(self, pixels)  # the one definition (uses .encoder and .normalize only)


class HeadGraph(nn.Module):
    """features -> probabilities (and the anomaly map), exactly as ``ImageClassifier`` computes them from its features."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.has_anomaly_map = hasattr(head, "forward_with_map")

    def forward(self, features: torch.Tensor):
        if self.has_anomaly_map:
            logits, anomaly_map = self.head.forward_with_map(features)
            return torch.softmax(logits, dim=-1), anomaly_map
        return torch.softmax(self.head(features), dim=-1)


def encoder_graph_key(graph: EncoderGraph, image_size: int, mean, std) -> str:
    """Content address of an encoder graph: its weights' bytes and everything else the export depends on."""
    h = hashlib.sha256(f"{GRAPH_FORMAT}|{graph.encoder.spec.key()}|{image_size}|{tuple(mean)}|{tuple(std)}|{OPSET}|{torch.__version__}".encode())
    for name, tensor in sorted(graph.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"\x1e{name}|{t.dtype}|{tuple(t.shape)}\x1f".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:24]


def graphs_dir() -> Path:
    return cache_dir() / "graphs"


def cached_encoder_graph(graph: EncoderGraph, image_size: int, mean, std) -> Path:
    """The path of ``graph``'s ONNX export in the cache, exported (and checked) first on a miss."""
    path = graphs_dir() / f"{encoder_graph_key(graph, image_size, mean, std)}.onnx"
    if path.is_file():
        try:
            os.utime(path)  # most recently used: kept by the pruning
            return path
        except OSError:  # removed by another process in between
            pass
    return refresh_encoder_graph(graph, image_size, path)


def load_encoder_graph(graph: EncoderGraph, image_size: int, mean, std) -> onnx.ModelProto:
    """The cached encoder graph as a model; an unreadable cache file is exported again."""
    path = cached_encoder_graph(graph, image_size, mean, std)
    try:
        return onnx.load_model(path)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, OSError, ... for a damaged file
        logger.warning("ignoring unreadable cached encoder graph %s: %s", path, exc)
        return onnx.load_model(refresh_encoder_graph(graph, image_size, path))


def encoder_runner(graph: EncoderGraph, image_size: int, mean, std, runtime: RuntimeConfig = RuntimeConfig()) -> OnnxRunner:
    """The cached encoder graph in the contract's runner (``predict`` gives features); an
    unreadable cache file is exported again. The last few runners are kept (a session takes a
    while to build, and one retrain asks for the same graph once per view and split)."""
    path = cached_encoder_graph(graph, image_size, mean, std)
    try:
        return _features_runner(path, runtime)
    except (ModelLoadError, OSError) as exc:
        logger.warning("ignoring unreadable cached encoder graph %s: %s", path, exc)
        return _features_runner(refresh_encoder_graph(graph, image_size, path), runtime)


@functools.lru_cache(maxsize=4)  # content-addressed paths: the same path is the same graph
def _features_runner(path: Path, runtime: RuntimeConfig) -> OnnxRunner:
    return OnnxRunner(path, runtime, output=FEATURES_NAME)


def refresh_encoder_graph(graph: EncoderGraph, image_size: int, path: Path) -> Path:
    """Export ``graph`` to ``path`` (atomically, after checking it against torch) and prune the cache."""
    graph = copy.deepcopy(graph).eval().cpu()
    example = torch.randint(0, 256, (2, image_size, image_size, 3), dtype=torch.uint8)  # batch >= 2 keeps the axis dynamic
    model = export_module(graph, example, INPUT_NAME, [FEATURES_NAME])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        onnx.save_model(model, tmp)
        check_encoder_parity(graph, tmp, image_size)  # a wrong graph never enters the cache
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("cached the encoder graph %s", path)
    prune_graphs()
    return path


def check_encoder_parity(graph: EncoderGraph, path: Path, image_size: int, n: int = 2, tolerance: float = ENCODER_TOLERANCE) -> float:
    """Max |features_onnx - features_torch| on random images (relative to the features' scale);
    ``AdaptError`` above ``tolerance``."""
    pixels = np.random.default_rng(0).integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = graph(torch.from_numpy(pixels)).numpy()
    got = OnnxRunner(path, output=FEATURES_NAME).predict(pixels)
    err = float(np.abs(expected - got).max() / max(1.0, float(np.abs(expected).max())))
    if not err <= tolerance:
        raise AdaptError(f"ONNX export parity check failed for the encoder graph: max |f_onnx - f_torch| = {err:.2e} > {tolerance:.0e}")
    return err


def prune_graphs(keep: int = MAX_CACHED_GRAPHS) -> None:
    """Remove the least recently used cached graphs beyond ``keep``."""
    def used(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    for stale in sorted(graphs_dir().glob("*.onnx"), key=used, reverse=True)[keep:]:
        stale.unlink(missing_ok=True)


def export_module(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str], small: bool = False) -> onnx.ModelProto:
    """``module`` (one input with a dynamic batch axis) as an optimised ONNX model.

    ``small`` (a head: a few matrix products): the TorchScript exporter first, which traces such a
    module in milliseconds where the ``torch.export`` one spends seconds building its operator
    table on every call (measured: 0.02 s vs 2.5 s for a linear head); the ``torch.export``
    exporter when tracing fails or the TorchScript one is gone. Either way the composed model's
    parity is checked (``adapt.core.export``)."""
    if small:
        try:
            return _traced_export(module, example, input_name, output_names)
        except Exception as exc:  # noqa: BLE001 - the tracer's errors have no common type; the other exporter decides
            logger.debug("TorchScript export of %s failed (%s): using torch.export", type(module).__name__, exc)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[input_name],
            output_names=output_names,
            dynamic_shapes={input_name: {0: _BATCH}},
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    program.optimize()
    return program.model_proto


def _traced_export(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str]) -> onnx.ModelProto:
    import io

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (example,),
            buffer,
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes={input_name: {0: "batch"}, **{name: {0: "batch"} for name in output_names}},
            opset_version=OPSET,
            dynamo=False,
        )
    return onnx.load_model_from_string(buffer.getvalue())


def compose_classifier(classifier: ImageClassifier) -> onnx.ModelProto:
    """The whole classifier as one model: the cached encoder graph joined to its freshly exported
    head graph (``pixels`` in; ``probabilities``, and ``anomaly_map`` for heads that have one, out)."""
    info = classifier.info
    trunk = EncoderGraph.of(classifier)
    encoder = load_encoder_graph(trunk, info.image_size, info.mean, info.std)
    head_graph = HeadGraph(classifier.head)
    example = _example_features(encoder, trunk, info.image_size)
    outputs = [OUTPUT_NAME, HEATMAP_NAME] if head_graph.has_anomaly_map else [OUTPUT_NAME]
    # a map head through torch.export: its graph states the map's grid (the TorchScript tracer leaves it symbolic)
    head = export_module(head_graph, example, FEATURES_NAME, outputs, small=not head_graph.has_anomaly_map)
    head.ir_version = max(head.ir_version, encoder.ir_version)  # merge_models wants one; a newer IR reads an older graph
    # every inner name prefixed so the two graphs cannot collide; the model's own inputs and outputs keep theirs
    keep_io = dict(rename_inputs=False, rename_outputs=False)
    encoder = compose.add_prefix(encoder, "encoder/", **keep_io)
    head = compose.add_prefix(head, "head/", **keep_io)
    model = compose.merge_models(encoder, head, io_map=[(FEATURES_NAME, FEATURES_NAME)], outputs=outputs)
    opsets = {(o.domain, o.version) for o in model.opset_import}  # merge_models lists each domain once per model
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in sorted(opsets))
    return model


def _example_features(encoder: onnx.ModelProto, trunk: EncoderGraph, image_size: int) -> torch.Tensor:
    """Two feature vectors of the shape the encoder graph gives (the head's export example), read
    from the graph; computed by torch only when the graph leaves a dimension symbolic."""
    (out,) = [o for o in encoder.graph.output if o.name == FEATURES_NAME]
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in out.type.tensor_type.shape.dim[1:]]
    if dims and all(dims):
        return torch.nn.functional.normalize(torch.randn(2, *dims), dim=-1)
    with torch.no_grad():
        return trunk(torch.randint(0, 256, (2, image_size, image_size, 3), dtype=torch.uint8))
