"""The exported model and the one ONNX runner: batching, and the parity check that stops a
wrong export from reaching anyone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from serving_fixtures import image_bytes, make_tiny_onnx

from adapt.contract.imageio import bytes_to_model_pixels
from adapt.contract.runtime import ModelLoadError, OnnxRunner
from adapt.errors import AdaptError


@pytest.fixture(scope="module")
def classifier(tiny_backbone):
    from adapt.core.classifier import ClassifierInfo, ImageClassifier, LinearHead
    from adapt.core.encoders import ImageEncoder

    torch.manual_seed(0)
    encoder = ImageEncoder(tiny_backbone.model.visual)
    dim = sum(encoder.layout(32).sizes.values())
    info = ClassifierInfo(labels=["good", "scratch"], image_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    return ImageClassifier(encoder, LinearHead(torch.randn(2, dim), torch.zeros(2)), info).eval()


@pytest.mark.unit
def test_the_runner_gives_the_same_answers_in_any_batch_size(tmp_path):
    runner = OnnxRunner(make_tiny_onnx(tmp_path / "m.onnx", labels=("a", "b", "c")))
    pixels = np.stack([bytes_to_model_pixels(image_bytes(b), 32) for b in (5, 60, 128, 200, 250)])
    whole = runner.predict(pixels)
    assert [runner.labels[i] for i in whole.argmax(axis=1)] == ["a", "a", "b", "c", "c"]
    np.testing.assert_allclose(runner.predict(pixels, batch_size=2), whole, rtol=1e-6)
    assert runner.predict(pixels[:0]).shape == (0, 3)
    with pytest.raises(ModelLoadError, match="no 'anomaly_map' output"):
        runner.predict_with_heatmap(pixels)


@pytest.mark.integration
def test_parity_check_names_the_difference_when_torch_and_onnx_disagree(classifier, tmp_path):
    from adapt.core.export import check_parity, export_onnx

    path = export_onnx(classifier, tmp_path / "m.onnx", check=False)
    assert check_parity(classifier, path) <= 1e-4
    changed = copy.deepcopy(classifier)
    with torch.no_grad():
        changed.head.linear.bias += torch.tensor([2.0, -2.0])  # the torch model is no longer what was exported
    with pytest.raises(AdaptError, match=r"parity check failed: max \|p_onnx - p_torch\| = .* > 1e-04"):
        check_parity(changed, path)
    # what an export runs: the torch head on the cached encoder graph's features
    assert check_parity(classifier, path, reference="encoder-graph") <= 1e-4
    with pytest.raises(AdaptError, match=r"parity check failed: max \|p_onnx - p_torch\|"):
        check_parity(changed, path, reference="encoder-graph")


@pytest.mark.integration
def test_an_export_that_fails_parity_leaves_no_model_behind(classifier, tmp_path, monkeypatch):
    from adapt.core.export import export_onnx

    good = export_onnx(classifier, tmp_path / "model.onnx")  # the model a user had before
    before = good.read_bytes()
    class Broken(OnnxRunner):  # the exported model as ONNX Runtime runs it gives something else than torch
        def predict(self, pixels, batch_size=0):
            return np.full((len(pixels), 2), 0.5, np.float32)

    monkeypatch.setattr("adapt.core.export.OnnxRunner", Broken)
    with pytest.raises(AdaptError, match="parity check failed"):
        export_onnx(classifier, tmp_path / "model.onnx")
    assert good.read_bytes() == before  # not replaced by the graph that failed
    with pytest.raises(AdaptError, match="parity check failed"):
        export_onnx(classifier, tmp_path / "new.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no half-written or failed file
