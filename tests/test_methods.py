"""Every adaptation method ends in the same classifier contract, exportable with parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapt.core.classifier import load_classifier, save_classifier
from adapt.data import few_shot_split, load_dataset
from adapt.contract.modelmeta import read_file as read_metadata
from adapt.core.export import check_parity, export_onnx
from adapt.methods import AdaptContext, Method, fit, make_config
from adapt.pipelines.retrain import RetrainConfig, RunHooks, retrain_context
from adapt.training.supervised import loop
from adapt.contract.modelmeta import INPUT_NAME, OUTPUT_NAME

QUICK = {
    Method.ZEROSHOT: {},
    Method.LINEAR: {},
    Method.COOP: {"epochs": "3"},
    Method.LORA: {"epochs": "3"},
    Method.TIP_ADAPTER: {"finetune": "true", "epochs": "3"},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import write_brightness_folder

    return load_dataset(write_brightness_folder(tmp_path_factory.mktemp("data") / "parts", per_class=16))


@pytest.fixture(scope="module")
def context(data, tiny_backbone):
    return data, AdaptContext(backbone=tiny_backbone, split=few_shot_split(data.train, 4, seed=1), progress=False, seed=1,
                              train=loop(progress=False, seed=1))


@pytest.fixture(scope="module")
def cnn_context(data, tiny_cnn_backbone):
    return data, AdaptContext(backbone=tiny_cnn_backbone, split=few_shot_split(data.train, 4, seed=1), progress=False, seed=1,
                              train=loop(progress=False, seed=1))


# every method on the ViT; on the CNN the methods whose encoders differ (probe: stages; cache: both;
# LoRA: adapted convs) -- zero-shot and CoOp use the same joint embedding as on the ViT. patchcore
# (labels [good, "defective"], CNN towers only) has its own tests: tests/test_patchcore.py
CASES = [(m, "vit") for m in Method if m is not Method.PATCHCORE] + [(m, "cnn") for m in (Method.LINEAR, Method.TIP_ADAPTER, Method.LORA)]


@pytest.mark.integration
@pytest.mark.parametrize("method,tower", CASES, ids=lambda c: c.value if isinstance(c, Method) else c)
def test_method_ends_in_the_classifier_contract(method, tower, request, tmp_path):
    data, ctx = request.getfixturevalue("context" if tower == "vit" else "cnn_context")
    result = fit(method, ctx, make_config(method, QUICK[method]))
    clf = result.classifier.eval()
    assert clf.labels == ["bright", "dark"] and clf.info.method == method.value
    pixels = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        probs = clf(pixels)
        assert torch.allclose(clf(pixels.float()), probs)  # uint8 or float pixels
    assert probs.shape == (3, 2) and torch.allclose(probs.sum(1), torch.ones(3), atol=1e-5)
    held = len(ctx.split.val) if result.val_labels is None else len(result.val_labels)  # linear: out-of-fold over train + val
    assert result.val_probabilities is not None and result.val_probabilities.shape == (held, 2)

    loaded = load_classifier(save_classifier(clf, tmp_path / "c.pt"))
    with torch.no_grad():
        assert torch.allclose(loaded(pixels), probs, atol=1e-6)

    path = export_onnx(clf, tmp_path / "m.onnx", model_name="parts", model_version="7", check=False)
    assert check_parity(clf, path, n=5) <= 1e-4
    meta = read_metadata(path)
    assert meta.labels == ["bright", "dark"] and meta.image_size == 32 and meta.model_version == "7"
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):  # the batch axis is dynamic
        x = np.random.default_rng(batch).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        assert session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].shape == (batch, 2)


@pytest.mark.integration
@pytest.mark.parametrize("method", [Method.LINEAR, Method.TIP_ADAPTER], ids=lambda m: m.value)
def test_trained_methods_separate_an_easy_task(method, context):
    data, ctx = context
    clf = fit(method, ctx, make_config(method, {})).classifier.eval()
    from adapt.core.features import load_pixels

    pixels = load_pixels(data.test, 32, progress=False)
    with torch.no_grad():
        pred = clf(pixels).argmax(1).numpy()
    assert (pred == data.test.labels).mean() >= 0.9


@pytest.mark.integration
def test_linear_probe_chooses_c_by_cross_validation_over_all_labelled_images(context):
    data, ctx = context
    result = fit(Method.LINEAR, ctx, make_config(Method.LINEAR, {"train_views": "2"}))
    n = len(ctx.split.train) + len(ctx.split.val)
    assert result.params["select"] == "cv" and result.params["cv_folds"] == 8  # 4-fold x 2 over 8 + 8 images
    # the reject threshold gets a prediction for every labelled image from a model that did not see it
    assert result.val_labels is not None and len(result.val_labels) == n and result.val_probabilities.shape == (n, 2)
    assert "cross-validation (16 labelled images)" == result.val_source
    assert (result.val_probabilities.argmax(1) == result.val_labels).mean() >= 0.9  # an easy task, held out
    old_way = fit(Method.LINEAR, ctx, make_config(Method.LINEAR, {"select": "val", "train_views": "1"}))
    assert old_way.val_labels is None and old_way.val_probabilities.shape == (len(ctx.split.val), 2)
    with pytest.raises(ValueError, match="select must be one of cv, val"):
        make_config(Method.LINEAR, {"select": "test"})


@pytest.mark.unit
def test_dihedral_views_are_the_eight_turns_and_mirror_images():
    from adapt.core.encoders import dihedral

    x = torch.arange(9.0).view(1, 1, 3, 3)
    views = [dihedral(x, v) for v in range(8)]
    assert torch.equal(views[0], x) and torch.equal(views[1], torch.flip(x, dims=(3,)))
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8  # all different
    turned = {tuple(dihedral(torch.rot90(x, 1, dims=(2, 3)), v).flatten().tolist()) for v in range(8)}
    assert turned == {tuple(v.flatten().tolist()) for v in views}  # a turned image has the same 8 views
    pixels = torch.arange(2 * 3 * 3 * 3).view(2, 3, 3, 3)  # [N, H, W, 3]
    assert torch.equal(dihedral(pixels, 3, dims=(1, 2)), dihedral(pixels.permute(0, 3, 1, 2), 3).permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="0-7"):
        dihedral(x, 8)


@pytest.mark.integration
def test_test_time_views_are_inside_the_exported_model_and_make_it_turn_invariant(cnn_context, tmp_path):
    from adapt.contract.runtime import OnnxRunner

    data, ctx = cnn_context
    pixels = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    turned, mirrored = torch.rot90(pixels, 1, dims=(1, 2)), torch.flip(pixels, dims=(1,))
    plain = fit(Method.LINEAR, ctx, make_config(Method.LINEAR, {"tta_views": "1"})).classifier.eval()
    tta = fit(Method.LINEAR, ctx, make_config(Method.LINEAR, {"tta_views": "8"})).classifier.eval()
    with torch.no_grad():
        assert not torch.allclose(plain.logits(turned), plain.logits(pixels), atol=1e-4)  # a CNN alone is not turn-invariant
        for other in (turned, mirrored):
            assert torch.allclose(tta.logits(other), tta.logits(pixels), atol=1e-4)
    assert load_classifier(save_classifier(tta, tmp_path / "c.pt")).encoder.spec.views == 8
    runner = OnnxRunner(export_onnx(tta, tmp_path / "m.onnx"))  # parity checked on export
    assert np.allclose(runner.predict(turned.numpy()), runner.predict(pixels.numpy()), atol=1e-4)


@pytest.mark.unit
def test_hyper_parameters_are_parsed_and_validated():
    cfg = make_config("lora", {"rank": "8", "towers": "vision", "augment": "false"})
    assert cfg.rank == 8 and cfg.towers == ["vision"] and cfg.augment is False
    assert "alpha=" not in repr(make_config("linear", {}))
    with pytest.raises(ValueError, match="unknown hyper-parameter 'rnak'"):
        make_config("lora", {"rnak": "8"})
    with pytest.raises(ValueError, match="towers"):
        make_config("lora", {"towers": "audio"})


@pytest.mark.integration
@pytest.mark.parametrize("head", ["linear-probe", "text"])
def test_lora_merges_its_adapters_without_changing_the_function(head, context):
    from adapt.core.features import load_pixels

    data, ctx = context
    before = {k: v.clone() for k, v in ctx.backbone.model.visual.state_dict().items()}
    result = fit(Method.LORA, ctx, make_config(Method.LORA, {"epochs": "3", "head": head, "lr": "5e-3"}))
    clf = result.classifier
    after = clf.encoder.visual.state_dict()
    assert set(after) == set(before)  # merged: plain module names, no lora_ parameters left
    assert result.params["trainable_parameters"] > 0
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert result.params["best_epoch"] >= 0  # a trained epoch beat the start on validation: its adapters are in the weights
    assert any("attn" in k for k in changed) and any("c_fc" in k for k in changed)
    # the merged, exported-to-be classifier computes what the adapted network computed
    with torch.no_grad():
        merged = clf(load_pixels(ctx.split.val, 32, progress=False)).numpy()
    np.testing.assert_allclose(merged, result.val_probabilities, atol=1e-5)
    # the backbone the context holds is untouched
    assert all(torch.equal(v, ctx.backbone.model.visual.state_dict()[k]) for k, v in before.items())


@pytest.mark.integration
def test_lora_on_a_cnn_tower_adapts_its_pointwise_convs_and_keeps_batch_norm_statistics(cnn_context):
    from adapt.core.features import load_pixels

    data, ctx = cnn_context
    before = {k: v.clone() for k, v in ctx.backbone.model.visual.state_dict().items()}
    result = fit(Method.LORA, ctx, make_config(Method.LORA, {"epochs": "2", "lr": "1e-2", "patience": "5"}))
    after = result.classifier.encoder.visual.state_dict()
    assert set(after) == set(before) and result.params["trainable_parameters"] > 0
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    stats = {k for k in before if "running_" in k or "num_batches" in k}
    assert not (changed & stats)  # batch-norm statistics are ImageNet's, untouched by 8 training images
    assert result.params["best_epoch"] >= 0  # a trained epoch won: the merged adapters changed the weights
    assert changed and all(".conv_pw" in k for k in changed)  # conv_pw and conv_pwl, nothing else
    with torch.no_grad():
        merged = result.classifier(load_pixels(ctx.split.val, 32, progress=False)).numpy()
    np.testing.assert_allclose(merged, result.val_probabilities, atol=1e-5)


@pytest.mark.integration
def test_lora_select_all_fine_tunes_on_every_labelled_image_and_exports_its_test_time_views(cnn_context):
    data, ctx = cnn_context
    before = {k: v.clone() for k, v in ctx.backbone.model.visual.state_dict().items()}
    cfg = make_config(Method.LORA, {"select": "all", "epochs": "2", "lr": "1e-2", "pooling": "avg+max", "tta_views": "2", "probe_views": "2"})
    result = fit(Method.LORA, ctx, cfg)
    spec = result.classifier.encoder.spec
    assert spec.views == 2 and spec.pooling == "avg+max"  # what the exported model computes
    assert result.params["epochs_run"] == 2 and result.params["best_epoch"] == -1  # no validation: the last epoch is kept
    assert result.val_probabilities is None and not result.notes  # nothing held out, nothing claimed about it
    changed = {k for k in before if not torch.equal(before[k], result.classifier.encoder.visual.state_dict()[k])}
    assert changed and all(".conv_pw" in k for k in changed)  # the adapters trained and were merged
    with pytest.raises(ValueError, match="select=all fine-tunes from the linear probe"):
        make_config(Method.LORA, {"select": "all", "head": "text"})
    with pytest.raises(ValueError, match="select must be"):
        make_config(Method.LORA, {"select": "best"})


@pytest.mark.unit
def test_cnn_features_are_pooled_mid_level_stages_for_probes_and_both_for_the_cache(tiny_cnn_backbone, tiny_backbone):
    from adapt.core.encoders import EMBEDDING, STAGES, ImageEncoder

    b = tiny_cnn_backbone
    assert b.encoder_spec("probe").parts == (STAGES,) and b.encoder_spec("cache").parts == (EMBEDDING, STAGES)
    assert b.encoder_spec("text").parts == (EMBEDDING,)
    assert tiny_backbone.encoder_spec("probe").parts == (EMBEDDING,)  # a ViT has no stages: its embedding
    enc = ImageEncoder(b.model.visual, b.encoder_spec("cache")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = enc(x)
        layout = enc.layout(32)
        emb = torch.nn.functional.normalize(b.model.visual(x), dim=-1)
    assert layout.sizes == {EMBEDDING: 32, STAGES: 40 + 112 + 320}
    assert torch.allclose(feats[:, layout.slice(EMBEDDING)], emb, atol=1e-6)  # the embedding part is the joint space


@pytest.mark.unit
def test_training_keeps_the_start_when_no_epoch_beats_it_on_validation():
    from adapt.training.supervised import TrainConfig, train_classifier

    torch.manual_seed(0)
    x = torch.randn(40, 4)
    y = (x[:, 0] > 0).long()
    net = torch.nn.Linear(4, 2)
    with torch.no_grad():  # start at a perfect separator
        net.weight.copy_(torch.tensor([[-5.0, 0, 0, 0], [5.0, 0, 0, 0]]))
        net.bias.zero_()
    start = net.weight.clone()
    # training on shuffled labels can only hurt validation: the starting weights must come back
    result = train_classifier(net, (x, y[torch.randperm(40)]), (x, y), TrainConfig(epochs=3, lr=0.5, patience=5), progress=False)
    assert result.best_epoch == -1 and torch.equal(net.weight, start)


@pytest.mark.unit
def test_device_strings_become_lightning_trainer_arguments():
    from adapt.training.devices import lightning_device

    assert lightning_device("cpu") == {"accelerator": "cpu", "devices": 1}
    assert lightning_device("cuda") == {"accelerator": "gpu", "devices": 1}
    assert lightning_device("cuda:1") == {"accelerator": "gpu", "devices": [1]}
    with pytest.raises(ValueError, match="unknown device"):
        lightning_device("tpu:0")


@pytest.mark.unit
@pytest.mark.parametrize("method", [Method.COOP, Method.TIP_ADAPTER], ids=lambda m: m.value)
def test_the_device_reaches_the_trainer(method, context, monkeypatch):
    """``--device cuda:1`` must reach the training loop (checked without a GPU: the loop is replaced)."""
    import dataclasses

    import adapt.training.supervised as supervised
    from adapt.methods import coop, tip_adapter

    data, ctx = context
    feats = torch.nn.functional.normalize(torch.randn(len(ctx.split.train), 64), dim=-1)
    val = torch.nn.functional.normalize(torch.randn(len(ctx.split.val), 64), dim=-1)
    fake = lambda *a, **k: (feats, torch.as_tensor(ctx.split.train.labels), val, torch.as_tensor(ctx.split.val.labels))  # noqa: E731
    monkeypatch.setattr(coop, "frozen_features", fake)
    monkeypatch.setattr(tip_adapter, "frozen_features", fake)
    monkeypatch.setattr(tip_adapter, "class_embeddings", lambda c: torch.randn(2, 64))
    seen = []

    class Reached(Exception):
        pass

    def recorder(*args, device="cpu", **kwargs):
        seen.append(device)
        raise Reached

    monkeypatch.setattr(supervised, "train_classifier", recorder)
    cfg = make_config(method, {"finetune": "true"} if method is Method.TIP_ADAPTER else {})
    retrain_cfg = RetrainConfig(data="unused", method=method, device="cuda:1", output_dir="unused")
    wired = retrain_context(retrain_cfg, ctx.backbone, ctx.split, {}, RunHooks())  # what `adapt retrain --device cuda:1` builds
    assert wired.device == "cuda:1"
    with pytest.raises(Reached):
        fit(method, dataclasses.replace(ctx, train=wired.train), cfg)
    assert seen == ["cuda:1"]


@pytest.mark.unit
def test_a_method_that_trains_needs_a_loop(context):
    import dataclasses

    data, ctx = context
    with pytest.raises(ValueError, match="give the AdaptContext a loop"):
        fit(Method.COOP, dataclasses.replace(ctx, train=None), make_config(Method.COOP, {"epochs": "1"}))


@pytest.mark.unit
def test_the_methods_do_not_import_lightning():
    """Lightning lives in adapt.training only: the method contract and the methods load without it."""
    import subprocess
    import sys

    code = ("import sys; import adapt.methods, adapt.methods.coop, adapt.methods.lora, adapt.methods.linear, "
            "adapt.methods.tip_adapter, adapt.methods.zeroshot; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]; print(bad); assert not bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.integration
def test_coop_keeps_a_trained_context_that_beat_its_initial_prompt(context):
    data, ctx = context
    flags = {n: p.requires_grad for n, p in ctx.backbone.model.named_parameters()}
    result = fit(Method.COOP, ctx, make_config(Method.COOP, {"epochs": "4", "lr": "1e-2", "init": ""}))
    assert result.params["best_epoch"] >= 0  # an epoch of training beat the random start on validation
    zero = fit(Method.ZEROSHOT, ctx).classifier.head.weight
    assert not torch.allclose(result.classifier.head.weight, zero, atol=1e-3)  # learned prompts, not the templates
    assert {n: p.requires_grad for n, p in ctx.backbone.model.named_parameters()} == flags  # the shared backbone is left as it was


@pytest.mark.unit
def test_the_registry_is_the_one_list_of_methods_and_their_option_rules():
    from adapt.methods import registry

    assert set(registry.names()) == {m.value for m in Method}
    assert [s.name for s in registry.auto_candidates()] == ["linear", "tip-adapter", "lora"]
    assert "patchcore" in [s.name for s in registry.auto_candidates(good_label="ok")]
    registry.check_options("patchcore", good_label="ok")
    registry.check_options("linear", unlabeled=True)
    for method, kwargs, message in [("patchcore", {}, "needs --good-label"), ("lora", {"good_label": "ok"}, "--good-label is for --method patchcore"),
                                    ("lora", {"unlabeled": True}, "--unlabeled is used by --method linear only"), ("nope", {}, "unknown method 'nope'")]:
        with pytest.raises(ValueError, match=message):
            registry.check_options(method, **kwargs)


@pytest.mark.integration
def test_cross_validation_keeps_the_simpler_of_two_equal_methods_and_drops_a_useless_one(context):
    import dataclasses

    from adapt.methods import registry
    from adapt.methods.base import FitResult
    from adapt.methods.selection import cross_validate_methods

    data, ctx = context

    def always_first_class(c, cfg):  # a method that learned nothing
        clf = fit(Method.LINEAR, c).classifier
        with torch.no_grad():
            clf.head.linear.weight.zero_()
            clf.head.linear.bias.copy_(torch.tensor([1.0, 0.0]))
        return FitResult(clf, params={})

    linear = registry.get("linear")
    candidates = [(dataclasses.replace(linear, name="useless", fit=always_first_class), None), (linear, linear.config()),
                  (dataclasses.replace(linear, name="linear-again"), linear.config())]
    sel = cross_validate_methods(candidates, dataclasses.replace(ctx, progress=False), budget_s=600, folds=4, repeats=2, seed=1)
    assert sel.folds == 4 and sel.repeats == 2 and len(sel.pool) == len(ctx.split.train) + len(ctx.split.val)
    assert sel.result("useless").mean == pytest.approx(0.5) and sel.result("linear").mean >= 0.9
    assert sel.choice == "linear" and sel.reason.startswith("beat useless")  # linear-again ties it on the same folds: kept
    assert [r.method for r in sel.runners_up()][-1] == "useless"
    oof = sel.result("linear").out_of_fold()
    assert oof.shape == (len(sel.pool), 2) and np.allclose(oof.sum(1), 1, atol=1e-5)  # every labelled image was held out
    assert sel.metrics()["cv/linear/folds"] == 8 and sel.params()["auto.choice"] == "linear"


@pytest.mark.unit
def test_risk_coverage_curve_trades_review_for_accuracy():
    from adapt.pipelines.review import at_threshold, risk_coverage

    top = np.array([0.99, 0.9, 0.8, 0.7])
    probs = np.stack([top, 1 - top], axis=1)
    labels = np.array([0, 0, 1, 0])  # the third most confident is wrong
    review, accuracy = risk_coverage(probs, labels)
    np.testing.assert_allclose(review, [0.75, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(accuracy, [1.0, 1.0, 2 / 3, 0.75])
    assert at_threshold(probs, labels, 0.85) == (0.5, 1.0)


@pytest.mark.unit
def test_inspection_augmentation_turns_and_relights_but_keeps_the_image_format():
    from adapt.methods.lora import AugmentedPixels, QuarterTurn

    img = torch.arange(9, dtype=torch.uint8).view(1, 3, 3).repeat(3, 1, 1)
    turns = {tuple(QuarterTurn()(img)[0].flatten().tolist()) for _ in range(40)}
    assert len(turns) == 4 and all(sorted(t) == list(range(9)) for t in turns)  # the 4 quarter turns, pixels kept
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    ds = AugmentedPixels(pixels, torch.tensor([0, 1]), augment=True, inspection=True)
    out, label = ds[1]
    assert out.shape == (32, 32, 3) and out.dtype == torch.uint8 and int(label) == 1 and not torch.equal(out, pixels[1])
    assert torch.equal(AugmentedPixels(pixels, torch.tensor([0, 1]), augment=False)[0][0], pixels[0])
