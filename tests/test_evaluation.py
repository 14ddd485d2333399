"""The reject threshold decides which parts a person reviews (``needs_review``): it must reach the
target accuracy on what it accepts, never send more than the allowed share to review, and
never review anything when it can't tell."""

from __future__ import annotations

import numpy as np
import pytest

from adapt.core.evaluation import choose_reject_threshold, compute_metrics

pytestmark = pytest.mark.unit


def _two_class(top: list[float], correct: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    top = np.asarray(top)
    probs = np.stack([top, 1 - top], axis=1)  # class 0 predicted everywhere
    labels = np.where(correct, 0, 1)
    return probs, labels


def test_the_threshold_reviews_the_unsure_mistakes_and_keeps_the_sure_answers():
    probs, labels = _two_class([0.99, 0.98, 0.97, 0.95, 0.9, 0.85, 0.6, 0.55], [True] * 6 + [False, False])
    t = choose_reject_threshold(probs, labels, target_accuracy=0.95, max_review_rate=0.5)
    assert 0.6 < t < 0.85  # between the last sure right answer and the first unsure wrong one
    m = compute_metrics(probs, labels, ["ok", "crack"], reject_threshold=t)
    assert m["accuracy_on_accepted"] == 1.0 and m["needs_review_rate"] == pytest.approx(0.25)


def test_an_unreachable_target_reviews_at_most_the_allowed_share():
    probs, labels = _two_class([0.99, 0.9, 0.8, 0.7, 0.65, 0.6, 0.55, 0.52], [False, True] * 4)
    t = choose_reject_threshold(probs, labels, target_accuracy=0.99, max_review_rate=0.25)
    assert np.mean(probs.max(axis=1) < t) == pytest.approx(0.25)


def test_no_review_without_validation_data_or_when_everything_is_right():
    assert choose_reject_threshold(None, np.array([])) == 0.0
    probs, labels = _two_class([0.9, 0.8, 0.7, 0.6], [True] * 4)
    assert choose_reject_threshold(probs, labels) == 0.0


@pytest.mark.unit
def test_evaluation_takes_the_cached_feature_shortcut_only_where_the_exported_model_agrees(tmp_path, caplog):
    from conftest import write_brightness_folder
    from serving_fixtures import make_tiny_onnx

    from adapt.contract.runtime import OnnxRunner
    from adapt.core.predict import predict_exported, predict_onnx
    from adapt.data.images import ImageSet

    folder = write_brightness_folder(tmp_path / "parts", per_class=10, classes=("good", "defect"))
    keys = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))
    images = ImageSet(keys, [int(k.startswith("defect")) for k in keys], ("good", "defect"), root=str(folder))
    path = make_tiny_onnx(tmp_path / "m.onnx")
    meta = OnnxRunner(path).metadata
    truth = predict_onnx(path, images, meta, progress=False)

    calls = []

    def same(subset):  # what a frozen-feature head on cached features computes: the model's own numbers
        calls.append(len(subset))
        return predict_onnx(path, subset, meta, progress=False)

    probs, how = predict_exported(path, images, meta, same, tolerance=1e-4, check=5, progress=False)
    np.testing.assert_allclose(probs, truth, atol=1e-6)
    assert how["route"] == "cached features" and how["checked_images"] == 5 and calls == [20]

    def wrong(subset):  # a shortcut that drifted from the export (stale cache, changed trunk)
        return predict_onnx(path, subset, meta, progress=False)[:, ::-1]

    with caplog.at_level("WARNING"):
        probs, how = predict_exported(path, images, meta, wrong, tolerance=1e-4, check=5, progress=False)
    np.testing.assert_allclose(probs, truth, atol=1e-6)  # the model's answers, not the shortcut's
    assert how == {"route": "exported model"} and "evaluating every image with the model" in caplog.text
    probs, how = predict_exported(path, images, meta, lambda s: truth[:3], tolerance=1e-4, progress=False)
    assert how == {"route": "exported model"} and probs.shape == truth.shape
