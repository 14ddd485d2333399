"""Unlabeled images: the loader (never test images), the semi-supervised linear probe, SSL pretraining."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from adapt.data.unlabeled import load_unlabeled, unlabeled_fingerprint


@pytest.fixture()
def line(tmp_path):
    """A labelled folder with train/test splits, and an unlabeled folder that also holds a copy of a test image."""
    from conftest import write_brightness_folder

    root = tmp_path / "parts"
    write_brightness_folder(root / "train", per_class=10)
    write_brightness_folder(root / "test", per_class=3, seed=1)
    unlabeled = tmp_path / "unlabeled"
    write_brightness_folder(unlabeled / "batch1", per_class=6, seed=2)
    shutil.copyfile(root / "test" / "dark" / "dark_000.png", unlabeled / "copied_test_image.png")
    return root, unlabeled


@pytest.mark.unit
def test_unlabeled_folder_and_csv_leave_out_held_out_test_images(line, tmp_path):
    from adapt.data import load_dataset

    root, folder = line
    data = load_dataset(str(root))
    images = load_unlabeled(str(folder), exclude=data.test)
    assert len(images) == 12 and "copied_test_image.png" not in images.keys
    assert len(load_unlabeled(str(folder))) == 13
    manifest = tmp_path / "unlabeled.csv"
    manifest.write_text("path,comment\n" + "".join(f"unlabeled/{k},x\n" for k in images.keys))
    from_csv = load_unlabeled(str(manifest), exclude=data.test)
    assert len(from_csv) == 12 and unlabeled_fingerprint(from_csv) == unlabeled_fingerprint(images)


@pytest.mark.unit
def test_elpv_unlabeled_is_the_train_pool_only():
    from adapt.data.elpv import load_elpv

    data = load_elpv("elpv")
    images = load_unlabeled("elpv", exclude=data.test)
    assert len(images) == len(data.train) == 1968 and not set(images.keys) & set(data.test.keys)


@pytest.mark.unit
def test_semisupervised_fit_uses_unlabeled_structure_and_keeps_plain_candidates():
    from adapt.methods.frozen import selection_score
    from adapt.methods.semisup import ClusterCentering, fit_semisupervised, l2_normalize

    rng = np.random.default_rng(0)
    offset = np.zeros(8)
    offset[0] = 3.0  # a big shared offset of the line's images that centering removes

    def sample(n, cls):
        x = rng.normal(0, 1, (n, 8)) + offset
        x[:, 1] += 1.5 if cls else -1.5
        return l2_normalize(x)

    x, y = np.concatenate([sample(3, 0), sample(3, 1)]), np.array([0] * 3 + [1] * 3)
    xv, yv = np.concatenate([sample(3, 0), sample(3, 1)]), y.copy()
    u = np.concatenate([sample(40, 0), sample(40, 1)])
    seen = []
    fitted = fit_semisupervised(x, y, xv, yv, u, c_grid=[1.0, 10.0], report=lambda p, s, i: seen.append(p))
    assert {p["clusters"] for p in seen} == {0, 1, 2} and {p["spread_neighbors"] for p in seen} == {0, 10}
    xt, yt = np.concatenate([sample(200, 0), sample(200, 1)]), np.array([0] * 200 + [1] * 200)
    assert selection_score(fitted.predict_proba(xt), yt)[0] > 0.8
    c = ClusterCentering.fit(u, 1)
    assert np.allclose(c.centroids[0], u.mean(axis=0))


@pytest.mark.integration
def test_retrain_with_unlabeled_records_them_and_exports_the_same_contract(line, tiny_cnn_arch, tmp_path):
    from adapt.core.classifier import load_classifier
    from adapt.pipelines.retrain import RetrainConfig, run_retrain

    root, folder = line
    cfg = RetrainConfig(data=str(root), method="linear", shots=4, seed=1, backbone=tiny_cnn_arch, pretrained="imagenet",
                        output_dir=tmp_path / "run", unlabeled=str(folder), progress=False)
    result = run_retrain(cfg)
    assert result.params["unlabeled_images"] == 12 and len(result.params["unlabeled_fingerprint"]) == 16
    assert result.metrics["accuracy"] >= 0.8  # brightness is trivially separable
    run = json.loads((result.output_dir / "run.json").read_text())
    assert run["params"]["unlabeled"] == str(folder)
    clf = load_classifier(result.classifier_path)
    pixels = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    probs = clf(pixels)
    assert probs.shape == (3, 2) and torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)
    assert (result.output_dir / "model.onnx").is_file()


@pytest.mark.unit
def test_unlabeled_with_a_method_that_does_not_use_them_is_a_clear_error(line):
    from adapt.pipelines.retrain import RetrainConfig

    with pytest.raises(ValueError, match="linear only"):
        RetrainConfig(data=str(line[0]), method="coop", unlabeled=str(line[1]))


@pytest.mark.integration
def test_ssl_pretrain_adapts_the_upper_tower_keeps_the_text_tower_and_loads_as_a_backbone(line, tiny_cnn_arch, tmp_path, capsys):
    from adapt.cli import main
    from adapt.core.backbone import create_backbone

    _, folder = line
    out = tmp_path / "ssl"
    args = ["-q", "pretrain", "--objective", "ssl", "--data", str(folder), "--from", "imagenet", "--model", tiny_cnn_arch,
            "--ssl-image-size", "32", "--batch-size", "4", "--max-steps", "2", "--num-workers", "0", "--accelerator", "cpu",
            "--lr", "1e-2", "--output-dir", str(out), "--no-tracking"]
    assert main(args) == 0
    assert "unlabeled image(s)" in capsys.readouterr().out
    torch.manual_seed(0)  # the run seeds itself with --seed 0 before creating its (random) text tower
    before = create_backbone(tiny_cnn_arch, "imagenet").model
    after = create_backbone(tiny_cnn_arch, str(out)).model
    b, a = before.state_dict(), after.state_dict()
    assert all(torch.equal(b[k], a[k]) for k in b if not k.startswith("visual."))  # text tower carried over
    assert all(torch.equal(b[k], a[k]) for k in b if k.startswith("visual.trunk.blocks.0."))  # frozen lower blocks
    assert any(not torch.equal(b[k], a[k]) for k in b if k.startswith("visual.trunk.blocks.6."))  # adapted upper blocks
    record = json.loads((out / "open_clip_config.json").read_text())["pretrain"]
    assert record["objective"] == "ssl" and record["unlabeled_images"] == 13


@pytest.mark.integration
def test_centered_linear_head_exports_to_onnx_with_parity(tiny_cnn_backbone, tmp_path):
    from adapt.core.classifier import (
        CenteredLinearHead,
        ClassifierInfo,
        ImageClassifier,
    )
    from adapt.core.encoders import ImageEncoder
    from adapt.core.export import export_onnx
    from adapt.core.predict import predict_onnx  # noqa: F401  (the evaluation path reads the same file)

    b = tiny_cnn_backbone
    encoder = ImageEncoder(b.model.visual, b.encoder_spec("probe")).eval()
    with torch.no_grad():
        dim = encoder(torch.zeros(1, 3, 32, 32)).shape[1]
    torch.manual_seed(0)
    head = CenteredLinearHead(torch.nn.functional.normalize(torch.randn(2, dim), dim=-1), torch.randn(2, dim), torch.zeros(2))
    info = ClassifierInfo(labels=["a", "b"], image_size=32, mean=list(b.mean), std=list(b.std), method="linear",
                          backbone=b.describe(), arch=b.arch, model_cfg=b.model_cfg)
    clf = ImageClassifier(encoder, head, info).eval()
    path = export_onnx(clf, tmp_path / "model.onnx")  # checks ONNX Runtime against torch
    assert path.is_file()
