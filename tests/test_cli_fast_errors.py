"""User errors answer at once: one line, exit code != 0, and before torch / open_clip / MLflow are imported.

Each case runs the CLI in a fresh interpreter (so earlier imports can't hide a slow path) and
reports which heavy modules got imported; none may be, since they take 8-19 s on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

HEAVY = ("torch", "open_clip", "lightning", "mlflow")
RUN_CLI = f"""
import contextlib, io, json, sys
from adapt.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
        rc = main(json.loads(sys.argv[1]))
    except SystemExit as exc:
        rc = exc.code
print(json.dumps({{"rc": rc, "stderr": err.getvalue(), "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""

CASES = [
    (["retrain", "--data", "nowhere"], "dataset not found: nowhere"),
    (["retrain", "--data", "empty"], "no images in empty"),
    (["retrain", "--data", "synthetic", "--method", "bogus"], "invalid choice: 'bogus'"),
    (["retrain", "--data", "synthetic", "--hp", "rank"], "--hp must look like KEY=VALUE"),
    (["retrain", "--data", "synthetic", "--method", "lora", "--hp", "rnak=8"], "unknown hyper-parameter 'rnak' for lora"),
    (["retrain", "--data", "synthetic", "--method", "lora", "--hp", "rank=eight"], "--hp: invalid literal"),
    (["retrain", "--data", "synthetic", "--pretrained", "/no/such/weights.bin"], "weights not found"),
    (["retrain", "--data", "synthetic", "--method", "patchcore"], "--method patchcore needs --good-label"),
    (["retrain", "--data", "synthetic", "--method", "linear", "--good-label", "good"], "--good-label is for --method patchcore"),
    (["retrain", "--data", "synthetic", "--hp", "rank=8"], "--hp sets one method's hyper-parameters: name the --method too"),
    (["retrain", "--data", "synthetic", "--budget-minutes", "0"], "--budget-minutes must be positive"),
    (["retrain", "--data", "synthetic", "--review-budget", "1.5"], "--review-budget must be in [0, 1]"),
    (["retrain", "--data", "synthetic", "--method", "patchcore", "--good-label", "good", "--hp", "pool=2"], "pool must be an odd number"),
    (["eval", "--model", "missing.onnx", "--data", "synthetic"], "model not found: missing.onnx"),
    (["eval", "--model", "model.onnx", "--data", "nowhere"], "dataset not found: nowhere"),
    (["eval", "--model", "models:/parts", "--data", "synthetic"], "not a registry model URI"),
    (["eval", "--model", "models:/parts@champion", "--data", "synthetic", "--tracking-uri", "sqlite:///none.db"],
     "no MLflow store at"),
    (["export", "--model", "missing", "--out", "x.onnx"], "model not found: missing"),
    (["serve", "--model", "missing.onnx"], "model not found: missing.onnx"),
    (["serve", "--model", "model.onnx", "--token-file", "tokens.txt"], "--token-file: no such file"),
    (["classify", "--server", "localhost:1", "missing.png"], "no such file or folder: missing.png"),
    (["models", "promote", "parts", "latest"], "VERSION must be a version number"),
    (["models", "list", "--tracking-uri", "sqlite:///none.db"], "no MLflow store at"),
    (["models", "log", "nowhere"], "not an adapt retrain output folder"),
    (["pretrain", "--data", "synthetic,pairs.csv"], "manifest not found: pairs.csv"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(argv[:2]) + f"-{i}" for i, (argv, _) in enumerate(CASES)])
def test_user_error_is_one_line_before_heavy_imports(argv, message, tmp_path):
    (tmp_path / "empty" / "good").mkdir(parents=True)
    (tmp_path / "model.onnx").write_bytes(b"not really a model")
    proc = subprocess.run([sys.executable, "-c", RUN_CLI, json.dumps(argv)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] not in (0, None)
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"adapt {argv[0]}") and message in lines[0], result["stderr"]
    assert result["heavy"] == [], f"imported {result['heavy']} before answering"


def test_unknown_registered_model_alias_or_version_answers_before_torch_is_imported(tmp_path):
    """A typo in a models:/ URI is looked up through MLflow's client: seconds, not a torch import."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=store, registry_uri=store).create_registered_model("parts")  # the real schema, no versions
    for uri, message in [
        ("models:/parts@champion", "model 'parts' has no alias 'champion'"),
        ("models:/parts/3", "model 'parts' has no version 3"),
        ("models:/gears@champion", "no registered model 'gears'"),
    ]:
        argv = ["export", "--model", uri, "--out", "x.onnx", "--tracking-uri", store]
        proc = subprocess.run([sys.executable, "-c", RUN_CLI, json.dumps(argv)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        lines = result["stderr"].strip().splitlines()
        assert result["rc"] not in (0, None) and len(lines) == 1 and message in lines[0], result["stderr"]
        assert not set(result["heavy"]) - {"mlflow"}, f"imported {result['heavy']} before answering"
