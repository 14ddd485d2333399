"""`adapt retrain` / `eval` / `export` end to end, as a user runs them, on tiny self-made data."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from adapt.cli import main
from adapt.methods.configs import hp

TINY = ["--backbone", "adapt-tiny", "--pretrained", "none", "--no-tracking"]
QUICK_HP = {"coop": ["--hp", "epochs=3"], "lora": ["--hp", "epochs=3"], "tip-adapter": ["--hp", "finetune=true", "--hp", "epochs=3"]}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from conftest import write_brightness_folder

    return write_brightness_folder(tmp_path_factory.mktemp("cli") / "parts", per_class=14)


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["zeroshot", "linear", "coop", "lora", "tip-adapter"])
def test_retrain_writes_model_metrics_and_confusion_matrix(method, parts, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["-q", "retrain", "--data", str(parts), "--method", method, "--shots", "4", "--seed", "1", "--output-dir", str(out)]
    assert main(args + TINY + QUICK_HP.get(method, [])) == 0
    printed = capsys.readouterr().out
    assert "balanced accuracy" in printed and str(out / "model.onnx") in printed
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "roc_auc", "confusion_matrix"):
        assert key in metrics
    assert set(metrics["per_class"]) == {"bright", "dark"} and metrics["n"] == 7
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    if method in ("linear", "tip-adapter"):  # brightness is trivially separable
        assert metrics["accuracy"] >= 0.85
    # the linear probe is scored from its cached test features once the exported model agreed on a sample
    assert metrics["evaluation"]["route"] == ("cached features" if method == "linear" else "exported model")

    # eval on the exported model reproduces the held-out metrics
    assert main(["-q", "eval", "--model", str(out), "--data", str(parts), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["accuracy"] == pytest.approx(metrics["accuracy"])
    assert again["dataset_fingerprint"] == metrics["dataset_fingerprint"]


@pytest.mark.e2e
def test_export_rewrites_onnx_with_parity(parts, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["-q", "retrain", "--data", str(parts), "--method", "linear", "--shots", "4", "--output-dir", str(out)] + TINY) == 0
    capsys.readouterr()
    assert main(["-q", "export", "--model", str(out), "--out", str(tmp_path / "x.onnx"), "--reject-threshold", "0.9"]) == 0
    assert "max |dp|" in capsys.readouterr().out
    from adapt.contract.modelmeta import read_file as read_metadata

    assert read_metadata(tmp_path / "x.onnx").reject_threshold == 0.9


def _move(root, names, label):
    (root / label).mkdir()
    for name in names:
        (root / "dark" / name).rename(root / label / name)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "setup, args, message",
    [
        (lambda root: None, ["--data", "{root}/nowhere"], "dataset not found"),
        (lambda root: _move(root, ["dark_000.png", "dark_001.png"], "rare"), ["--shots", "4"], "class 'rare' has 2 training image(s), fewer than --shots 4"),
        (lambda root: None, ["--shots", "50"], "fewer than --shots 50"),
        (lambda root: None, ["--shots", "4", "--hp", "bogus=1"], "unknown hyper-parameter 'bogus'"),
        (lambda root: None, ["--shots", "4", "--pretrained", "/no/such/weights.bin"], "not found"),
    ],
    ids=["missing-path", "too-small-class", "too-many-shots", "bad-hp", "missing-weights"],
)
def test_bad_input_is_a_one_line_error(setup, args, message, tmp_path, capsys):
    from conftest import write_brightness_folder

    root = write_brightness_folder(tmp_path / "parts", per_class=12)
    setup(root)
    base = ["retrain", "--data", str(root), "--method", "linear", "--output-dir", str(tmp_path / "out")]
    argv = base + TINY + [a.format(root=root) for a in args]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err and message in err[-1] and err[-1].startswith("adapt retrain: error:")
    assert not (tmp_path / "out" / "model.onnx").exists()


@pytest.mark.e2e
def test_corrupt_image_is_reported_and_the_run_goes_on(parts, tmp_path):
    (parts / "dark" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "adapt", "retrain", "--data", str(parts), "--method", "linear", "--shots", "4",
             "--output-dir", str(tmp_path / "run")] + TINY,
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )
    finally:
        (parts / "dark" / "zz_corrupt.png").unlink()
    assert proc.returncode == 0, proc.stderr
    assert "zz_corrupt.png" in proc.stderr and "skipping unreadable image" in proc.stderr
    assert (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.unit
def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("retrain", "eval", "export", "pretrain"):
        assert command in text


@pytest.mark.e2e
def test_feedback_store_joins_the_training_pool_only(parts, tmp_path, capsys):
    """`adapt serve` stores operator feedback as <label>/<id>.png + feedback.csv; --include adds it."""
    from conftest import write_brightness_folder

    feedback = write_brightness_folder(tmp_path / "feedback", per_class=3, seed=9)
    (feedback / "feedback.csv").write_text("path,label\n")
    out = tmp_path / "run"
    assert main(["-q", "retrain", "--data", str(parts), "--method", "linear", "--shots", "12", "--include", str(feedback),
                 "--output-dir", str(out)] + TINY) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 7  # the held-out split is the data's own
    run = json.loads((out / "run.json").read_text())
    assert run["params"]["shots"] == 12  # 10 train-pool images per class + 3 from feedback >= 12
    (feedback / "weird").mkdir()
    (feedback / "dark" / "dark_000.png").rename(feedback / "weird" / "x.png")
    capsys.readouterr()
    assert main(["-q", "retrain", "--data", str(parts), "--method", "linear", "--shots", "4", "--include", str(feedback),
                 "--output-dir", str(tmp_path / "run2")] + TINY) == 1
    assert "label(s) ['weird']" in capsys.readouterr().err


@pytest.mark.unit
def test_config_file_gives_defaults_and_flags_win(tmp_path):
    from adapt.cli import build_parser, config_file

    cfg = tmp_path / "run.yaml"
    cfg.write_text("data: elpv\nmethod: tip-adapter\nshots: 4\noutput-dir: out\nhp: {beta_grid: '1,5'}\ninclude: feedback\n")
    argv = ["retrain", "--config", str(cfg), "--shots", "8"]
    parser = build_parser()
    config_file.apply(parser, argv)
    args = parser.parse_args(argv)
    assert (args.data, args.method, args.shots, args.output_dir) == ("elpv", "tip-adapter", 8, "out")
    assert args.hp == ["beta_grid=1,5"] and args.include == ["feedback"]


@pytest.mark.unit
@pytest.mark.parametrize("text, message", [
    ("data: elpv\nshotz: 3\n", "unknown option 'shotz'"),
    ("method: nope\n", "must be one of"),
    ("shots: many\n", "option 'shots'"),
    ("- a\n- b\n", "expected a mapping"),
    ("data: [unclosed\n", "not valid YAML"),
])
def test_a_bad_config_file_fails_with_one_line(tmp_path, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    out = subprocess.run([sys.executable, "-m", "adapt", "retrain", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def _write_wide_marked_folder(root, per_class=14):
    """96x32 grey images; class 'marked' has a bright bar in the left sixth, outside the centre square."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("clean", "marked"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            img = np.full((32, 96), 110, dtype=np.uint8)
            if label == "marked":
                top = int(rng.integers(0, 16))
                img[top : top + 16, 2:14] = 250
            Image.fromarray(img).save(root / label / f"{label}_{i:02d}.png")
    return root


@pytest.mark.e2e
def test_squash_keeps_a_defect_at_the_image_end_that_a_centre_crop_loses(tmp_path, capsys):
    from adapt.contract.modelmeta import read_file as read_metadata

    root = _write_wide_marked_folder(tmp_path / "wide")
    accuracy = {}
    for mode in ("squash", "shortest"):
        out = tmp_path / mode
        extra = [] if mode == "squash" else ["--resize-mode", mode]  # squash is the default
        argv = ["-q", "retrain", "--data", str(root), "--method", "linear", "--shots", "4", "--output-dir", str(out)]
        assert main(argv + TINY + extra) == 0
        assert read_metadata(out / "model.onnx").resize_mode == mode
        accuracy[mode] = json.loads((out / "metrics.json").read_text())["balanced_accuracy"]
    capsys.readouterr()
    assert accuracy["squash"] >= 0.85
    assert accuracy["shortest"] == pytest.approx(0.5)  # every centre crop is the same grey square


# A toy method, as a user of the registry adds one: this file's part is "the one new file", the
# register() call in the test "the one registry line" (adapt/methods/registry.py holds the real ones).
@dataclasses.dataclass
class NearestMeanConfig:
    scale: float = hp(20.0, "logit scale of the cosine to the class means")


def fit_nearest_mean(ctx, cfg):
    """Cosine to each class's mean frozen feature."""
    import torch

    from adapt.core.classifier import CosineHead, ImageClassifier
    from adapt.methods.base import FitResult
    from adapt.methods.frozen import frozen_features

    train, y, val, _ = frozen_features(ctx, "probe")
    means = torch.nn.functional.normalize(torch.stack([train[y == c].mean(0) for c in range(len(ctx.classes))]), dim=-1)
    head = CosineHead(means, cfg.scale)
    with torch.no_grad():
        val_probs = torch.softmax(head(val), dim=-1).numpy()
    clf = ImageClassifier(ctx.encoder("probe"), head, ctx.info("nearest-mean", {"scale": cfg.scale})).eval()
    return FitResult(clf, params={"scale": cfg.scale}, val_probabilities=val_probs)


@pytest.fixture
def toy_method():
    from adapt.methods import registry

    registry.register(registry.MethodSpec("nearest-mean", NearestMeanConfig, fit_nearest_mean, "cosine to class means"))
    yield "nearest-mean"
    registry.unregister("nearest-mean")


@pytest.mark.e2e
def test_a_method_added_by_one_registry_entry_runs_from_the_cli(toy_method, parts, tmp_path, capsys):
    from adapt.contract.modelmeta import read_file as read_metadata

    assert main(["retrain", "--data", str(parts), "--method", toy_method, "--hp", "bogus=1"] + TINY) == 1
    assert "unknown hyper-parameter 'bogus' for nearest-mean (known: scale)" in capsys.readouterr().err
    assert main(["retrain", "--data", str(parts), "--method", toy_method, "--good-label", "bright"] + TINY) == 1
    assert "--good-label is for --method patchcore" in capsys.readouterr().err
    out = tmp_path / "toy"
    assert main(["-q", "retrain", "--data", str(parts), "--method", toy_method, "--shots", "4", "--hp", "scale=30",
                 "--output-dir", str(out)] + TINY) == 0
    assert f"{toy_method} · 4-shot" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["params"]["method"] == toy_method and run["params"]["hp.scale"] == 30.0
    assert read_metadata(out / "model.onnx").method == toy_method
    assert json.loads((out / "metrics.json").read_text())["accuracy"] >= 0.85  # brightness: the class means separate it


@pytest.mark.e2e
def test_auto_is_the_default_and_names_the_winner_and_the_runners_up(parts, tmp_path, capsys, monkeypatch):
    from adapt.methods import registry

    lora = registry.get("lora")
    monkeypatch.setitem(registry.REGISTRY, "lora", dataclasses.replace(lora, auto=False))  # keeps the test fast; lora is tested in test_methods
    out = tmp_path / "auto"
    assert main(["retrain", "--data", str(parts), "--shots", "4", "--hp", "C=1"] + TINY) == 1
    assert "--hp sets one method's hyper-parameters: name the --method too" in capsys.readouterr().err
    assert main(["-q", "retrain", "--data", str(parts), "--shots", "4", "--review-budget", "0.2", "--output-dir", str(out)] + TINY) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    sel = metrics["selection"]
    assert set(sel["candidates"]) == {"linear", "tip-adapter"} and sel["choice"] == metrics["method"]
    assert sel["folds"] == 4 and all(c["folds"] >= 4 and 0.5 <= c["mean"] <= 1 for c in sel["candidates"].values())
    runner_up = ({"linear", "tip-adapter"} - {sel["choice"]}).pop()
    assert f"method auto chose {sel['choice']}" in printed and f"runners-up: {runner_up}" in printed
    run = json.loads((out / "run.json").read_text())
    assert run["params"]["method"] == "auto" and run["params"]["auto.choice"] == sel["choice"]
    assert metrics["accuracy"] >= 0.85
    review = metrics["review"]  # the threshold comes from the winner's out-of-fold probabilities of all 16 labelled images
    assert review["budget"] == 0.2 and review["estimated_on"] == "cross-validation (16 labelled images)"
    assert review["expected_review_rate"] <= 0.2 and "asked: review at most 20%" in printed
    assert (out / "risk_coverage.png").read_bytes()[:4] == b"\x89PNG"
