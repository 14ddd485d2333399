"""Anomaly mode (patchcore): good-only fit, the exported two-output contract, heatmaps over gRPC and in ``adapt classify``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from serving_fixtures import image_bytes, make_tiny_onnx, start_server

from adapt.cli import main
from adapt.data import load_dataset
from adapt.data.anomaly import DEFECTIVE, anomaly_metrics, anomaly_split
from adapt.errors import DataError
from adapt.contract.modelmeta import HEATMAP_NAME, INPUT_NAME, OUTPUT_NAME
from services.client import InspectionClient

pytestmark = pytest.mark.integration


def _spotted(size: int, spot: bool, seed: int) -> np.ndarray:
    """A mid-grey noisy surface, with a bright square in the top-left quarter when ``spot``."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(110, 12, (size, size)), 0, 255)
    if spot:
        img[2 : size // 3, 2 : size // 3] = 250
    return np.repeat(img[..., None], 3, axis=2).astype(np.uint8)


def write_spot_folder(root, per_class: int = 10, size: int = 32):
    for split, offset in (("train", 0), ("test", 1000)):
        for label, spot in (("ok", False), ("spot", True)):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(_spotted(size, spot, offset + i + (500 if spot else 0))).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def spot_folder(tmp_path_factory):
    return write_spot_folder(tmp_path_factory.mktemp("spots"))


@pytest.fixture(scope="module")
def patchcore_run(spot_folder, tiny_cnn_backbone, tmp_path_factory):
    """One patchcore fit + export on the tiny CNN (32 px: a 4x4 patch grid; image score = mean of the
    worst 4 patches), shared by the tests below."""
    from adapt.core.classifier import save_classifier
    from adapt.core.export import export_onnx
    from adapt.methods import AdaptContext, fit, make_config

    data = load_dataset(str(spot_folder))
    split = anomaly_split(data, "ok", shots=4, seed=1)
    ctx = AdaptContext(backbone=tiny_cnn_backbone, split=split.split, progress=False)
    result = fit("patchcore", ctx, make_config("patchcore", {"pool": "1", "top_fraction": "0.25", "combine": "max"}))
    out = tmp_path_factory.mktemp("patchcore")
    save_classifier(result.classifier, out / "classifier.pt")
    return result, export_onnx(result.classifier, out / "model.onnx", model_name="spots"), split


def test_anomaly_split_learns_from_good_images_only(spot_folder):
    data = load_dataset(str(spot_folder))
    split = anomaly_split(data, "ok", shots=4, seed=1)
    assert split.data.classes == ("ok", DEFECTIVE) and split.defect_classes == ("spot",)
    assert set(split.split.train.labels.tolist()) == {0} and len(split.split.train) == 4
    assert sorted(split.split.val.class_counts().values()) == [4, 4]  # 4 more good + 4 spots to choose the threshold
    assert len(split.test_kinds) == len(data.test)
    with pytest.raises(DataError, match="not a class"):
        anomaly_split(data, "good", shots=4, seed=1)


def test_anomaly_metrics_report_auc_balanced_accuracy_and_recall_per_defect_class():
    kinds = ("ok", "ok", "scratch", "scratch", "spot", "spot")
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    m = anomaly_metrics(probs, kinds, "ok")
    assert m["defect_recall"] == {"scratch": 1.0, "spot": 0.5}
    assert m["good_recall"] == 0.5
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 0.75) / 2)
    assert m["roc_auc"] == pytest.approx(7 / 8)


def test_patchcore_exports_probabilities_and_an_anomaly_map_that_finds_the_spot(patchcore_run):
    from adapt.contract.modelmeta import read_file as read_metadata
    from adapt.core.export import ort_session

    result, path, _ = patchcore_run
    meta = read_metadata(path)
    assert meta.labels == ["ok", DEFECTIVE] and meta.method == "patchcore" and meta.anomaly_threshold > 0
    session = ort_session(path)
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME, HEATMAP_NAME]
    pixels = np.stack([_spotted(32, False, 7), _spotted(32, True, 8), _spotted(32, True, 9)])
    probs, heat = session.run(None, {INPUT_NAME: pixels})  # dynamic batch of 3, parity was checked on export
    assert probs.shape == (3, 2) and heat.shape == (3, 4, 4)
    assert probs[0, 1] < 0.5 < probs[1, 1] and probs[2, 1] > 0.5
    row, col = np.unravel_index(heat[1].argmax(), heat[1].shape)
    assert row < 2 and col < 2  # the spot is in the top-left quarter
    assert heat[1][:2, :2].mean() > heat[1][2:, 2:].mean()
    # the heatmap's threshold is in patch-distance units: the patch score alone at the decision threshold
    assert result.params["bank_size"] >= 1 and result.params["map_threshold"] == pytest.approx(meta.anomaly_threshold)
    assert result.params["top_k"] == 4 and result.params["combine"] == "max" and result.params["threshold_rule"] == "val_balanced_accuracy"


def _onnx_matches_torch(result, path):
    import torch

    from adapt.core.export import ort_session

    pixels = np.stack([_spotted(32, False, 31), _spotted(32, True, 32), np.full((32, 32, 3), 200, np.uint8)])
    probs, heat = ort_session(path).run(None, {INPUT_NAME: pixels})
    with torch.no_grad():
        ref_probs, ref_heat = result.classifier.forward_with_map(torch.from_numpy(pixels))
    np.testing.assert_allclose(probs, ref_probs.numpy(), atol=1e-4)
    np.testing.assert_allclose(heat, ref_heat.numpy(), rtol=1e-3, atol=1e-4)
    return probs


def test_exported_combined_score_matches_torch(patchcore_run):
    """ONNX parity of the combined (patch + image statistics) score, beyond the export's own check."""
    result, path, _ = patchcore_run
    probs = _onnx_matches_torch(result, path)
    assert result.classifier.head.combine == "max" and result.classifier.head.image_bank.shape[0] == 1
    assert probs[2, 1] > 0.5  # a flat grey part: no surface at all, defective


@pytest.mark.parametrize("combine", ["auto", "image", "local"])
def test_each_score_rule_exports_with_parity_and_says_what_it_uses(combine, spot_folder, tiny_cnn_backbone, tmp_path):
    """``combine=auto`` (the default) picks local, image or max by validation ROC-AUC, records it and its
    reason, and exports what it picked; a picked ``local`` is the patch-score model (no image level)."""
    from adapt.core.anomaly_choices import AUTO_CANDIDATES
    from adapt.core.export import export_onnx
    from adapt.methods import AdaptContext, fit, make_config

    split = anomaly_split(load_dataset(str(spot_folder)), "ok", shots=4, seed=1)
    ctx = AdaptContext(backbone=tiny_cnn_backbone, split=split.split, progress=False)
    hp = {"pool": "1", "top_fraction": "0.25"} | ({} if combine == "auto" else {"combine": combine})
    result = fit("patchcore", ctx, make_config("patchcore", hp))
    p, head = result.params, result.classifier.head
    assert p["combine_rule"] == combine and p["combine"] == head.combine
    if combine == "auto":
        assert set(p["combine_val_auc"]) == set(AUTO_CANDIDATES) and p["combine"] in AUTO_CANDIDATES
        assert p["combine_val_auc"][p["combine"]] == max(p["combine_val_auc"].values())
        assert f"combine=auto chose {p['combine']} (validation ROC-AUC: local " in p["score"]
    else:
        assert head.combine == combine and "combine_val_auc" not in p
    assert hasattr(head, "image_bank") == (head.combine != "local")
    assert len(p["stages"]) == (1 if head.combine == "local" else 2)  # the image statistics' level only where the score uses it
    probs = _onnx_matches_torch(result, export_onnx(result.classifier, tmp_path / "model.onnx", model_name="spots"))
    assert probs[0, 1] < 0.5 < probs[1, 1]


def _texture_features(n: int, mixed: bool, seed: int):
    """Patch features [n, 16, 2] of a two-texture surface: every good image has 8 patches of each texture
    (A = [1, 0], B = [0, 1], plus noise); with ``mixed=False`` all 16 patches are texture A: each patch is
    a good one, only the proportion changed (a texture-wide defect)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    a = torch.tensor([1.0, 0.0]).expand(n, 16, 2).clone()
    if mixed:
        a[:, 8:] = torch.tensor([0.0, 1.0])
    return a + 0.02 * torch.randn(n, 16, 2, generator=g)


def test_a_texture_wide_change_the_patch_score_misses_is_caught_by_the_image_statistics():
    from adapt.core.anomaly_head import PatchCoreHead, image_stats
    from adapt.methods.patchcore import choose_threshold, fit_image_bank, image_scores, standardise

    train, val_good = _texture_features(16, True, 0), _texture_features(8, True, 1)
    test_good, test_changed = _texture_features(8, True, 2), _texture_features(8, False, 3)
    bank = train.flatten(0, 1)
    local = PatchCoreHead(bank, 0.0, 1.0, grid=4, top_k=1)
    old_threshold = choose_threshold(image_scores(local, val_good), np.zeros(len(val_good), bool), 0.95)
    assert (image_scores(local, test_changed) >= old_threshold).mean() <= 0.25  # the old score: every changed patch is a good patch

    for kind in ("gaussian", "knn"):
        ibank, whiten = fit_image_bank(image_stats(train), kind)
        head = PatchCoreHead(bank, 0.0, 1.0, grid=4, top_k=1, combine="max", image_bank=ibank, image_whiten=whiten)
        head.norm = (*standardise(image_scores(local, val_good)), *standardise(head.image_distance(val_good).numpy()))
        val = image_scores(head, val_good)
        threshold = choose_threshold(val, np.zeros(len(val), bool), 0.95)
        new_good, new_changed = image_scores(head, test_good), image_scores(head, test_changed)
        assert new_changed.min() > max(new_good.max(), threshold), kind  # every changed surface flagged, above every good one


def _heads(bank, train, local_val, image_val_of):
    """The candidate heads of ``combine=auto`` for a bank and the good images' statistics."""
    from adapt.core.anomaly_choices import AUTO_CANDIDATES
    from adapt.core.anomaly_head import PatchCoreHead, image_stats
    from adapt.methods.patchcore import fit_image_bank, standardise

    ibank, whiten = fit_image_bank(image_stats(train))
    probe = PatchCoreHead(bank, 0.0, 1.0, grid=4, combine="image", image_bank=ibank, image_whiten=whiten)
    good = ~local_val[1]
    norm = (*standardise(local_val[0][good]), *standardise(probe.image_distance(image_val_of)[good].numpy()))
    return {c: PatchCoreHead(bank, 0.0, 1.0, grid=4, combine=c, image_bank=ibank, image_whiten=whiten, norm=norm) for c in AUTO_CANDIDATES}


def test_auto_takes_the_image_score_for_a_texture_wide_change_and_the_patch_score_for_local_marks():
    """The choice a user sees: a folder whose defects change the whole texture gets the image statistics; a
    folder with local marks on surfaces that vary a lot between good parts keeps the patch score alone
    (the image term would only add noise there); no defective validation image: max."""
    import torch

    from adapt.core.anomaly_head import PatchCoreHead
    from adapt.methods.patchcore import choose_combine, image_scores

    train = _texture_features(16, True, 0)
    bank = train.flatten(0, 1)
    local = PatchCoreHead(bank, 0.0, 1.0, grid=4)
    val = torch.cat([_texture_features(8, True, 1), _texture_features(8, False, 3)])
    defective = np.arange(16) >= 8
    lv = image_scores(local, val)
    chosen, val_auc = choose_combine(_heads(bank, train, (lv, defective), val), lv, val, defective)
    assert chosen != "local" and val_auc[chosen] == 1.0 > val_auc["local"]

    g = torch.Generator().manual_seed(5)

    def varied(n: int, mark: bool) -> torch.Tensor:  # 2-14 patches of texture B per good image; a mark: one patch far from both
        x = _texture_features(n, False, int(torch.randint(1000, (1,), generator=g)))
        for i in range(n):
            x[i, : int(torch.randint(2, 15, (1,), generator=g))] += torch.tensor([-1.0, 1.0])
            if mark:
                x[i, -1] = torch.tensor([0.6, 0.6])
        return x

    train, val = varied(16, False), torch.cat([varied(8, False), varied(8, True)])
    bank = train.flatten(0, 1)
    lv = image_scores(PatchCoreHead(bank, 0.0, 1.0, grid=4), val)
    heads = _heads(bank, train, (lv, defective), val)
    chosen, val_auc = choose_combine(heads, lv, val, defective)
    assert chosen == "local" and val_auc["local"] == 1.0 > val_auc["image"]
    assert choose_combine(heads, lv, val, np.zeros(16, bool)) == ("max", {})


def test_choose_threshold_balanced_accuracy_or_good_images_only():
    from adapt.methods.patchcore import choose_threshold

    scores = np.array([0.1, 0.2, 0.3, 0.4, 1.0, 1.2, 0.35])
    defective = np.array([False, False, False, False, True, True, True])
    t = choose_threshold(scores, defective, 0.95)
    assert 0.35 < t < 1.0 or 0.3 < t < 0.35  # a cut on the best balanced-accuracy plateau
    assert ((scores >= t) == defective).sum() >= 6
    good_only = choose_threshold(scores, defective, 0.5, good_only=True)
    assert good_only == pytest.approx(np.quantile(scores[~defective], 0.5))  # defects ignored
    assert choose_threshold(scores[:4], defective[:4], 0.95) == pytest.approx(np.quantile(scores[:4], 0.95))


def test_dihedral_gives_the_eight_flips_and_quarter_turns():
    import torch

    from adapt.methods.patchcore import dihedral

    img = torch.arange(9, dtype=torch.uint8).reshape(1, 3, 3, 1).expand(1, 3, 3, 3).contiguous()
    out = dihedral(img)
    assert out.shape == (8, 3, 3, 3)
    assert len({tuple(o[..., 0].flatten().tolist()) for o in out}) == 8  # all different views of an asymmetric image
    assert torch.equal(out[0], img[0]) and torch.equal(out[1], torch.rot90(img[0], 1, dims=(0, 1)))
    assert torch.equal(out[4], img[0].flip(1))  # a mirror image


def test_patchcore_config_rejects_unknown_score_settings():
    from adapt.methods import make_config

    assert make_config("patchcore", {"combine": "local"}).combine == "local"
    assert make_config("patchcore", {}).combine == "auto" and make_config("patchcore", {"combine": "image"}).combine == "image"
    for key, value in (("combine", "mean"), ("image_score", "svm"), ("image_stats", "gram"), ("threshold_rule", "best")):
        with pytest.raises(ValueError, match=key):
            make_config("patchcore", {key: value})


def test_image_score_is_the_mean_of_the_worst_patches():
    import torch

    from adapt.core.anomaly_head import PatchCoreHead

    bank = torch.zeros(1, 2)
    feats = torch.tensor([[[3.0, 4.0], [0.0, 1.0], [0.0, 2.0], [0.0, 0.0]]])  # distances 5, 1, 2, 0
    assert PatchCoreHead(bank, 0.0, 1.0, grid=2).scores(feats).item() == pytest.approx(5.0)
    head = PatchCoreHead(bank, 0.0, 1.0, grid=2, top_k=2)
    assert head.scores(feats).item() == pytest.approx(3.5)
    logits, heat = head.forward_with_map(feats)
    assert logits[0, 1].item() == pytest.approx(3.5) and heat.shape == (1, 2, 2)
    assert PatchCoreHead.from_config(head.config()).top_k == 2
    with pytest.raises(ValueError, match="top_k"):
        PatchCoreHead(bank, 0.0, 1.0, grid=2, top_k=5)


def test_saved_patchcore_classifier_loads_back(patchcore_run, tmp_path):
    import torch

    from adapt.core.classifier import load_classifier

    result, path, _ = patchcore_run
    loaded = load_classifier(path.parent / "classifier.pt")
    x = torch.from_numpy(np.stack([_spotted(32, True, 3)]))
    with torch.no_grad():
        assert torch.allclose(loaded(x), result.classifier(x)) and loaded.has_anomaly_map


@pytest.fixture(scope="module")
def server(patchcore_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("srv")
    srv = start_server([patchcore_run[1], make_tiny_onnx(root / "plain.onnx", name="plain")], root / "feedback", reload_interval=0)
    yield srv
    srv.stop(grace=1)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_heatmap_over_grpc_only_when_asked_and_only_from_anomaly_models(server):
    with InspectionClient(server.address) as client:
        plain = client.classify(_png(_spotted(32, True, 11)))
        assert not plain.HasField("heatmap")  # normal traffic pays nothing
        answer = client.classify(_png(_spotted(32, True, 11)), heatmap=True)
        assert answer.label == DEFECTIVE and answer.HasField("heatmap")
        h = answer.heatmap
        grid = np.array(h.values).reshape(h.height, h.width)
        assert (h.width, h.height) == (4, 4) and grid.max() > h.threshold > 0
        overlay = Image.open(io.BytesIO(h.overlay_png))
        assert overlay.size == (32, 32)
        streamed = list(client.classify_many([_png(_spotted(32, False, 12))], heatmap=True))
        assert streamed[0].HasField("heatmap") and streamed[0].label == "ok"
        no_map = client.classify(image_bytes(10), model="plain", heatmap=True)
        assert not no_map.HasField("heatmap")  # a model without an anomaly map simply answers without one
        infos = {m.name: m.heatmap for m in client.list_models()}
        assert infos == {"spots": True, "plain": False}


def test_classify_heatmaps_writes_overlays_that_show_the_defect(server, tmp_path, capsys):
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "a.png").write_bytes(_png(_spotted(32, True, 21)))
    (parts / "b.png").write_bytes(_png(_spotted(32, False, 22)))
    out = tmp_path / "heat"
    assert main(["classify", "--server", server.address, "--model", "spots", str(parts), "--heatmaps", str(out)]) == 0
    overlays = {p.name: np.asarray(Image.open(p).convert("RGB"), dtype=float) for p in out.iterdir()}
    assert set(overlays) == {"a.heatmap.png", "b.heatmap.png"}
    spot = overlays["a.heatmap.png"]
    redness = spot[..., 0] - spot[..., 2]
    assert redness[:10, :10].mean() > redness[16:, 16:].mean() + 50  # the top-left spot is drawn red


def test_final_mlflow_metrics_carry_the_recall_of_each_defect_class():
    from adapt.pipelines.retrain_tracking import final_metrics

    metrics = {"accuracy": 0.9, "n": 10, "per_class": {}, "anomaly": {"defect_recall": {"scratch": 0.5, "spot": 1.0}}}
    assert final_metrics(metrics)["test/defect_recall/scratch"] == 0.5 and final_metrics(metrics)["test/defect_recall/spot"] == 1.0


def test_retrain_on_a_folder_of_good_parts_only_says_so_and_still_exports(tmp_path, tiny_cnn_arch, capsys):
    import json

    root = tmp_path / "good_only"
    for i in range(12):
        (root / "ok").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_spotted(32, False, i)).save(root / "ok" / f"{i}.png")
    out = tmp_path / "run"
    argv = ["--quiet", "retrain", "--data", str(root), "--method", "patchcore", "--good-label", "ok", "--shots", "4",
            "--backbone", tiny_cnn_arch, "--pretrained", "imagenet", "--no-tracking", "--output-dir", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "no class besides 'ok'" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == ["ok", DEFECTIVE] and metrics["anomaly"]["defect_recall"] == {}
    assert metrics["anomaly"]["threshold_rule"] == "good_quantile_0.95" and "threshold: good_quantile_0.95" in printed  # says which rule
    assert metrics["anomaly"]["score"].startswith("max(patch, image")  # combine=auto without defective validation images
    assert "combine=auto: max (no defective validation image)" in metrics["anomaly"]["score"]
    assert (out / "model.onnx").is_file()


def test_patchcore_on_a_vit_uses_block_patch_tokens_and_exports(spot_folder, tmp_path):
    """Any architecture: on an open_clip ViT the bank holds patch tokens of its middle block."""
    import torch

    from adapt.core.backbone import create_backbone
    from adapt.core.export import export_onnx, ort_session
    from adapt.methods import AdaptContext, fit, make_config

    torch.manual_seed(0)
    vit = create_backbone("adapt-tiny", "none")  # 2 blocks, 32 px, 8 px patches: a 4x4 grid
    split = anomaly_split(load_dataset(str(spot_folder)), "ok", shots=4, seed=1)
    ctx = AdaptContext(backbone=vit, split=split.split, progress=False)
    result = fit("patchcore", ctx, make_config("patchcore", {"augment": "none", "pool": "1"}))
    assert result.params["stages"] == [1] and result.params["grid"] == 4 and result.params["feature_dim"] == 64
    path = export_onnx(result.classifier, tmp_path / "vit.onnx", model_name="vit-spots")  # parity checked
    pixels = np.stack([_spotted(32, False, 21), _spotted(32, True, 22)])
    probs, heat = ort_session(path).run(None, {INPUT_NAME: pixels})
    assert heat.shape == (2, 4, 4) and probs[1, 1] > probs[0, 1]
    assert heat[1][:2, :2].max() > heat[0][:2, :2].max()  # the spot's patches are the far ones
    with pytest.raises(ValueError, match="levels 0-1"):
        fit("patchcore", ctx, make_config("patchcore", {"stages": "5"}))
