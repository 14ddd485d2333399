"""Serving ``models:/NAME@ALIAS`` from a real (sqlite) MLflow registry, and following the alias."""

from __future__ import annotations

import tempfile
import time

import pytest
from serving_fixtures import image_bytes, make_tiny_onnx, start_server

from services.client import InspectionClient
from services.sources import RegistrySource, SourceError

pytestmark = pytest.mark.integration


def test_served_alias_follows_the_registry(tmp_path, monkeypatch):
    import mlflow
    import mlflow.onnx
    import onnx

    monkeypatch.chdir(tmp_path)  # the sqlite store keeps artifacts beside it
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    downloads = tmp_path / "tmp"
    downloads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(downloads))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)

    def register(version_tag: str) -> str:
        model = onnx.load(make_tiny_onnx(tmp_path / version_tag / "model.onnx", name="", version=""))
        with mlflow.start_run():
            info = mlflow.onnx.log_model(
                model, name="model", registered_model_name="tiny", pip_requirements=["onnxruntime"]
            )
        return str(info.registered_model_version)

    first = register("a")
    client.set_registered_model_alias("tiny", "champion", first)
    with pytest.raises(SourceError, match="cannot resolve alias"):
        RegistrySource("models:/tiny@nobody", tracking_uri=uri).poll()

    srv = start_server(["models:/tiny@champion"], tmp_path / "fb", tracking_uri=uri, reload_interval=0.2)
    try:
        with InspectionClient(srv.address) as inspection:
            answer = inspection.classify(image_bytes(250))
            assert (answer.label, answer.model_name, answer.model_version) == ("defect", "tiny", first)
            assert inspection.list_models()[0].source_uri == "models:/tiny@champion"
            second = register("b")
            client.set_registered_model_alias("tiny", "champion", second)
            deadline = time.monotonic() + 20
            while inspection.classify(image_bytes(0)).model_version != second:
                assert time.monotonic() < deadline, "alias move not picked up"
                time.sleep(0.1)
    finally:
        srv.stop(grace=1)
    assert not list(downloads.glob("adapt-serve-*")), "downloaded versions are deleted once loaded"
