"""Where a deployed model comes from: registry URIs, the tracking store's address, local files.

``models:/NAME@ALIAS`` follows an alias (``champion``), ``models:/NAME/VERSION`` pins a version.
Both the CLI (``adapt.tracking.registry``) and the service (``services.sources``) parse and
download them here; the service follows aliases here too (``alias_version``), so ``services/``
never imports MLflow itself. MLflow is imported only when the registry is asked something.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from adapt.errors import AdaptError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ONNX_FILE, TORCH_FILE = "model.onnx", "classifier.pt"  # what a retrain output folder / registered version holds
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class ModelUriError(AdaptError, ValueError):
    """Not a registry model URI."""


@dataclass(frozen=True)
class RegistryRef:
    name: str
    alias: str = ""
    version: str = ""


@dataclass
class LocalModel:
    """A classifier on local disk: its ONNX graph and/or torch checkpoint."""

    onnx_path: Path | None
    torch_path: Path | None
    name: str = ""
    version: str = ""
    uri: str = ""


def parse_model_uri(uri: str) -> RegistryRef:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> ``RegistryRef`` (``ModelUriError`` otherwise)."""
    match = _MODELS_URI.match(uri)
    if not match:
        raise ModelUriError(f"not a registry model URI: {uri!r} (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    return RegistryRef(match["name"], match["alias"] or "", match["version"] or "")


def tracking_uri_or_default(uri: str | None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded store ``sqlite:///mlflow.db``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def registry_client(tracking_uri: str):
    """An ``MlflowClient`` whose tracking and registry URIs are both ``tracking_uri``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def alias_version(name: str, alias: str, tracking_uri: str) -> str:
    """The version registered model ``name``'s ``alias`` points to now (MLflow's errors pass through)."""
    return str(registry_client(tracking_uri).get_model_version_by_alias(name, alias).version)


def download_version(client, name: str, version: str, dst: Path, tracking_uri: str, subpath: str = "") -> Path:
    """Download registered ``name``/``version`` (or just ``subpath`` of its artifacts) into ``dst``.

    The storage location is resolved with ``client`` (bound to ``tracking_uri``): MLflow would
    resolve ``models:/`` URIs through the process-wide registry URI instead."""
    import mlflow.artifacts

    location = client.get_model_version_download_uri(name, str(version)).rstrip("/")
    uri = f"{location}/{subpath}" if subpath else location
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri))


def onnx_files(root: Path) -> list[Path]:
    """The ONNX graphs under ``root``, the exported ``model.onnx`` (shallowest) first."""
    return sorted(Path(root).rglob("*.onnx"), key=lambda p: (p.name != ONNX_FILE, len(p.parts), str(p)))
