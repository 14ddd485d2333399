"""The exported model is the cached encoder graph composed with a freshly exported head: the same
single-file contract as a whole-model export, the trunk exported once per content, and no bad or
half-written graph in the cache or at the model path."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from adapt.contract.modelmeta import HEATMAP_NAME, INPUT_NAME, OUTPUT_NAME, read_file
from adapt.contract.runtime import ModelLoadError, OnnxRunner
from adapt.errors import AdaptError


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "graphs"


@pytest.fixture(scope="module")
def classifier(tiny_backbone):
    from adapt.core.classifier import ClassifierInfo, ImageClassifier, LinearHead
    from adapt.core.encoders import ImageEncoder

    torch.manual_seed(0)
    encoder = ImageEncoder(tiny_backbone.model.visual)
    dim = sum(encoder.layout(32).sizes.values())
    info = ClassifierInfo(labels=["good", "scratch", "crack"], image_size=32, mean=[0.5] * 3, std=[0.25] * 3, method="linear")
    return ImageClassifier(encoder, LinearHead(torch.randn(3, dim), torch.randn(3)), info).eval()


def _graph_files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _signature(path):
    model = onnx.load(str(path))
    def shape(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    return ([(i.name, i.type.tensor_type.elem_type, shape(i)) for i in model.graph.input],
            [(o.name, o.type.tensor_type.elem_type, shape(o)) for o in model.graph.output])


@pytest.mark.integration
def test_the_composed_model_is_one_self_contained_file_with_the_served_signature(classifier, fresh_cache, tmp_path):
    from adapt.core.export import export_checked

    path, err = export_checked(classifier, tmp_path / "out" / "model.onnx", model_name="parts", model_version="7")
    assert err <= 1e-4
    inputs, outputs = _signature(path)
    assert inputs == [(INPUT_NAME, onnx.TensorProto.UINT8, ["batch", 32, 32, 3])]
    assert outputs == [(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["batch", 3])]
    meta = read_file(path)
    assert (meta.labels, meta.model_name, meta.model_version, meta.method) == (["good", "scratch", "crack"], "parts", "7", "linear")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no external weights, no temporary file
    model = onnx.load(str(path))
    assert len({o.domain for o in model.opset_import}) == len(model.opset_import)
    pixels = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = classifier(torch.from_numpy(pixels)).numpy()
    runner = OnnxRunner(path)
    np.testing.assert_allclose(runner.predict(pixels), expected, atol=1e-5)  # any batch size
    np.testing.assert_allclose(runner.predict(pixels[:1]), expected[:1], atol=1e-5)
    assert len(_graph_files(fresh_cache)) == 1


@pytest.mark.integration
def test_the_trunk_is_exported_once_and_a_changed_trunk_gets_its_own_graph(classifier, fresh_cache, tmp_path, monkeypatch):
    from adapt.core import graphs
    from adapt.core.classifier import LinearHead
    from adapt.core.export import export_onnx

    export_onnx(classifier, tmp_path / "a.onnx")
    (cached,) = _graph_files(fresh_cache)
    exports = []
    real = graphs.refresh_encoder_graph
    monkeypatch.setattr(graphs, "refresh_encoder_graph", lambda *a: exports.append(1) or real(*a))
    retrained = copy.deepcopy(classifier)
    retrained.head = LinearHead(torch.randn(3, retrained.head.linear.in_features), torch.zeros(3))  # a new head, same trunk
    export_onnx(retrained, tmp_path / "b.onnx")
    assert exports == [] and _graph_files(fresh_cache) == [cached]
    with torch.no_grad():
        next(retrained.encoder.parameters()).add_(0.01)  # as a LoRA merge changes the weights
    export_onnx(retrained, tmp_path / "c.onnx")  # parity-checked against the changed trunk
    assert exports == [1] and len(_graph_files(fresh_cache)) == 2


@pytest.mark.integration
def test_an_unreadable_cached_graph_is_exported_again(classifier, fresh_cache, tmp_path):
    from adapt.core.export import export_onnx
    from adapt.core.graphs import EncoderGraph, encoder_runner

    export_onnx(classifier, tmp_path / "a.onnx")
    (cached,) = fresh_cache.iterdir()
    cached.write_bytes(b"not an onnx model")
    export_onnx(classifier, tmp_path / "b.onnx")
    assert onnx.load(str(cached)).graph.output[0].name == "features"
    cached.write_bytes(cached.read_bytes()[:100])  # truncated, as by a crash without the atomic rename
    runner = encoder_runner(EncoderGraph.of(classifier), 32, [0.5] * 3, [0.25] * 3)
    assert runner.metadata is None and runner.predict(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, classifier.head.linear.in_features)


@pytest.mark.integration
def test_an_encoder_graph_that_disagrees_with_torch_never_enters_the_cache(classifier, fresh_cache, tmp_path, monkeypatch):
    from adapt.core.export import export_onnx

    monkeypatch.setattr(OnnxRunner, "predict", lambda self, pixels, batch_size=0: np.zeros((len(pixels), 1), np.float32))
    with pytest.raises(AdaptError, match="parity check failed for the encoder graph"):
        export_onnx(classifier, tmp_path / "model.onnx")
    assert _graph_files(fresh_cache) == [] and not (tmp_path / "model.onnx").exists()


@pytest.mark.unit
def test_the_cache_keeps_the_most_recently_used_graphs(fresh_cache):
    import os

    from adapt.core.graphs import prune_graphs

    fresh_cache.mkdir(parents=True)
    for i in range(5):
        (fresh_cache / f"{i}.onnx").write_bytes(b"x")
        os.utime(fresh_cache / f"{i}.onnx", (1000 + i, 1000 + i))
    prune_graphs(keep=3)
    assert _graph_files(fresh_cache) == ["2.onnx", "3.onnx", "4.onnx"]


@pytest.mark.unit
def test_the_runner_runs_a_features_graph_without_classifier_metadata(tmp_path):
    from serving_fixtures import make_tiny_onnx

    path = make_tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match="expected input 'pixels' and output 'features'"):
        OnnxRunner(path, output="features")
    assert OnnxRunner(path).metadata.labels == ["good", "defect"]  # the default is the classifier contract, unchanged


@pytest.mark.integration
def test_an_anomaly_head_keeps_its_map_output_in_the_composed_model(tiny_cnn_backbone, fresh_cache, tmp_path):
    from adapt.core.anomaly_head import PatchCoreHead
    from adapt.core.classifier import ClassifierInfo, ImageClassifier
    from adapt.core.encoders import PATCHES, EncoderSpec, ImageEncoder
    from adapt.core.export import export_checked

    b = tiny_cnn_backbone
    encoder = ImageEncoder(b.model.visual, EncoderSpec((PATCHES,), (1, 2)))
    with torch.no_grad():
        feats = encoder(torch.zeros(1, 3, 32, 32))
    grid = int(feats.shape[1] ** 0.5)
    torch.manual_seed(0)
    head = PatchCoreHead(torch.randn(20, feats.shape[2]), threshold=1.0, scale=0.5, grid=grid)
    info = ClassifierInfo(labels=["good", "defect"], image_size=32, mean=list(b.mean), std=list(b.std))
    clf = ImageClassifier(encoder, head, info).eval()
    path, _ = export_checked(clf, tmp_path / "model.onnx")  # checks the map too
    _, outputs = _signature(path)
    assert [o[0] for o in outputs] == [OUTPUT_NAME, HEATMAP_NAME]
    assert outputs[1][2] == ["batch", grid, grid]
