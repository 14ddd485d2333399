"""``adapt retrain`` against a real ``mlflow server`` on 127.0.0.1, and ``mlflow models serve`` on the champion."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from serving_fixtures import free_port, image_bytes
from test_registry import race_for_champion

from adapt.cli import main
from adapt.tracking.registry import CHAMPION

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TINY = ["--backbone", "adapt-tiny", "--pretrained", "none"]
BIN = str(Path(sys.executable).parent)  # mlflow's servers start uvicorn from PATH


@dataclass
class Process:
    proc: subprocess.Popen
    uri: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)


def _start(cmd: list[str], uri: str, probe: str, log: Path, env: dict | None = None, timeout: float = 90) -> Process:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started = Process(proc, uri, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{cmd[2]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(uri + probe, timeout=2):
                return started
        except OSError:
            time.sleep(0.3)
    started.stop()
    pytest.fail(f"{cmd[2]} did not start within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def start_mlflow_server(root: Path, port: int | None = None) -> Process:
    """A lean tracking server (one worker, no job runner) with its own sqlite store and artifacts."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts")]
    return _start(cmd, f"http://127.0.0.1:{port}", "/health", root / f"server-{port}.log",
                  env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["-q", *map(str, args)])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def _restore_mlflow_env(monkeypatch):
    # adapt caps MLflow's HTTP retries for the process; keep that inside each test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Path:
    from conftest import write_brightness_folder

    return write_brightness_folder(tmp_path_factory.mktemp("data") / "parts", per_class=12)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def trained(server, parts, tmp_path_factory):
    """One retrain registered as 'parts' on the server: (stdout, output dir)."""
    out = tmp_path_factory.mktemp("retrain") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        rc, stdout, stderr = cli("retrain", "--data", parts, "--method", "coop", "--hp", "epochs=3", "--shots", 4,
                                 "--output-dir", out, "--tracking-uri", server.uri, "--register", "parts", *TINY)
    assert rc == 0, stderr
    return stdout, out


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_retrain_logs_and_registers_on_a_tracking_server(server, trained):
    stdout, out = trained
    c = _client(server.uri)
    exp = c.get_experiment_by_name("retrain-parts")
    (run,) = c.search_runs([exp.experiment_id])
    assert f"MLflow run: {server.uri}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}" in stdout
    assert "registered parts version 1; champion: moved to version 1" in stdout
    assert run.info.status == "FINISHED" and run.data.params["method"] == "coop"
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["test/balanced_accuracy"] == pytest.approx(metrics["balanced_accuracy"], abs=5e-5)
    assert len(c.get_metric_history(run.info.run_id, "val/balanced_accuracy")) == 3
    assert {"metrics.json", "confusion_matrix.png", "labels.json"} <= {a.path for a in c.list_artifacts(run.info.run_id)}
    assert str(c.get_registered_model("parts").aliases[CHAMPION]) == "1"
    assert c.get_model_version("parts", "1").tags["dataset_fingerprint"] == metrics["dataset_fingerprint"]

    from adapt.tracking.registry import fetch_registered

    local = fetch_registered("models:/parts@champion", server.uri)
    assert local.onnx_path.name == "model.onnx" and local.torch_path.is_file() and local.version == "1"


def test_racing_registrations_on_a_tracking_server_leave_the_better_champion(server, tmp_path, monkeypatch):
    race_for_champion(server.uri, "race", tmp_path, monkeypatch)


def test_server_dropping_mid_run_keeps_results_and_they_can_be_logged_later(parts, tmp_path, monkeypatch):
    from adapt.pipelines.retrain_tracking import RetrainTracker

    root = tmp_path / "flaky"
    srv = start_mlflow_server(root)
    port = int(srv.uri.rsplit(":", 1)[1])
    started = RetrainTracker.started

    def started_then_server_dies(self, params):
        started(self, params)  # the run exists; now the server goes away before training
        srv.stop()

    monkeypatch.setattr(RetrainTracker, "started", started_then_server_dies)
    try:
        rc, stdout, stderr = cli("retrain", "--data", parts, "--method", "coop", "--hp", "epochs=3", "--shots", 4,
                                 "--output-dir", tmp_path / "out", "--tracking-uri", srv.uri, "--register", "drop", *TINY)
    finally:
        srv.stop()
    assert rc == 1
    assert "balanced accuracy" in stdout
    reason = stderr.strip().splitlines()[-1]
    assert reason.startswith("adapt retrain: error: MLflow at http://127.0.0.1:") and "failed during training" in reason
    assert "Connection refused" in reason and f"the model and metrics are in {tmp_path / 'out'}" in reason
    assert {"model.onnx", "metrics.json", "confusion_matrix.png"} <= {p.name for p in (tmp_path / "out").iterdir()}

    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    srv = start_mlflow_server(root, port)  # the server is back, same address and store
    try:
        command = shlex.split(reason.split("log them later with: ", 1)[1])
        rc, stdout, stderr = cli(*command[1:])
        assert rc == 0, stderr
        assert "registered drop version 1; champion: moved to version 1" in stdout
        c = _client(srv.uri)
        finished = c.search_runs([c.get_experiment_by_name("retrain-parts").experiment_id], filter_string="attributes.status = 'FINISHED'")
        assert len(finished) == 1 and finished[0].data.tags["adapt.logged_later"] == "true"
        written = json.loads((tmp_path / "out" / "metrics.json").read_text())
        assert finished[0].data.metrics["test/balanced_accuracy"] == pytest.approx(written["balanced_accuracy"], abs=5e-5)  # what the user saw
    finally:
        srv.stop()


def test_mlflow_models_serve_answers_for_the_champion(server, trained, tmp_path):
    import mlflow.pyfunc
    import pandas as pd

    from adapt.tracking.registry import fetch_registered

    port = free_port()
    cmd = [str(Path(BIN) / "mlflow"), "models", "serve", "-m", "models:/parts@champion", "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    serving = _start(cmd, f"http://127.0.0.1:{port}", "/ping", tmp_path / "serve.log", env={"MLFLOW_TRACKING_URI": server.uri}, timeout=120)
    images = [base64.b64encode(image_bytes(level)).decode() for level in (15, 240)]
    try:
        body = json.dumps({"dataframe_records": [{"image": image} for image in images]}).encode()
        request = urllib.request.Request(serving.uri + "/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
    finally:
        serving.stop()
    assert [set(p) for p in predictions] == [{"label", "probability", "needs_review", "prob_dark", "prob_bright"}] * 2
    local = fetch_registered("models:/parts@champion", server.uri)
    model_dir = next(p for p in local.onnx_path.parents if (p / "MLmodel").is_file())
    expected = mlflow.pyfunc.load_model(str(model_dir)).predict(pd.DataFrame({"image": images}))
    assert [p["label"] for p in predictions] == list(expected["label"])
    assert [p["prob_bright"] for p in predictions] == pytest.approx(list(expected["prob_bright"]), abs=1e-6)
