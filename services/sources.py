"""Where a served model comes from: a local ``.onnx`` file or the MLflow model registry.

A source answers two questions: ``poll()`` -- a cheap token that changes when a new version
is there (a file's mtime, the version an alias points to) -- and ``fetch(token)`` -- a local
ONNX file for that token. The server polls every ``--reload-interval`` seconds and hot-reloads
when the token moves. The registry is asked through ``adapt.contract.model_uri`` (which imports
MLflow lazily, only for ``models:/`` URIs).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from adapt.contract.model_uri import (
    ONNX_FILE,
    alias_version,
    download_version,
    registry_client,
    onnx_files,
    parse_model_uri,
    tracking_uri_or_default,
)
from adapt.errors import first_line

logger = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """The model source cannot be read right now (missing file, unknown alias, registry down)."""


@dataclass(frozen=True)
class Artifact:
    """A local ONNX file of one model version."""

    path: Path
    name: str = ""  # name to serve it under ("" = the file's metadata, else its stem)
    version: str = ""  # version to report ("" = the file's metadata, else a content hash)
    temporary_dir: Path | None = None  # a download to delete once the model is loaded

    def discard(self) -> None:
        if self.temporary_dir is not None:
            shutil.rmtree(self.temporary_dir, ignore_errors=True)


class ModelSource(Protocol):
    """Anything the server can load model versions from (inject a fake one in tests)."""

    uri: str  # shown in ListModels and logs
    name: str  # selector name; "" = take it from the model file
    watchable: bool  # False when the source can never change (a pinned registry version)

    def poll(self) -> str: ...

    def fetch(self, token: str) -> Artifact: ...


class FileSource:
    """A local exported model; a new version is a new file renamed over it (new mtime/inode)."""

    watchable = True

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.uri = str(self.path)
        self.name = ""

    def poll(self) -> str:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise SourceError(f"{self.path}: {exc.strerror or exc}") from exc
        return f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"

    def fetch(self, token: str) -> Artifact:
        return Artifact(self.path)


class RegistrySource:
    """A registered MLflow model, pinned (``models:/NAME/3``) or following an alias (``models:/NAME@champion``)."""

    def __init__(self, uri: str, tracking_uri: str | None = None):
        self.ref = parse_model_uri(uri)
        self.uri = uri
        self.name = self.ref.name
        self.watchable = bool(self.ref.alias)
        self.tracking_uri = tracking_uri_or_default(tracking_uri)

    def poll(self) -> str:
        if not self.ref.alias:
            return self.ref.version
        try:
            return alias_version(self.ref.name, self.ref.alias, self.tracking_uri)
        except Exception as exc:  # MlflowException, connection errors, ...
            raise SourceError(f"{self.uri}: cannot resolve alias ({first_line(exc)})") from exc

    def fetch(self, token: str) -> Artifact:
        path, tmp = download_onnx(self.ref.name, token, self.tracking_uri)
        return Artifact(path, name=self.ref.name, version=token, temporary_dir=tmp)


def download_onnx(name: str, version: str, tracking_uri: str) -> tuple[Path, Path]:
    """Download the artifacts of registered ``name``/``version`` and find the ONNX file in them.

    Returns ``(onnx_path, download_dir)``; the caller deletes ``download_dir`` when done. The
    exported classifier is ``model.onnx`` somewhere in the version's artifact tree; any single
    other ``*.onnx`` file is accepted too.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in server logs
    tmp = Path(tempfile.mkdtemp(prefix=f"adapt-serve-{name}-v{version}-"))
    try:
        client = registry_client(tracking_uri)
        try:  # adapt's own models keep the graph at artifacts/model.onnx: fetch just that
            root = download_version(client, name, version, tmp, tracking_uri, subpath=f"artifacts/{ONNX_FILE}").parent
        except Exception:
            root = download_version(client, name, version, tmp, tracking_uri)
        found = onnx_files(root)
        if not found:
            raise SourceError(f"models:/{name}/{version}: no .onnx file in the model's artifacts")
        return found[0], tmp
    except SourceError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SourceError(f"models:/{name}/{version}: cannot download ({first_line(exc)})") from exc


def open_source(uri: str, tracking_uri: str | None = None) -> ModelSource:
    """The source for a ``--model`` value: ``models:/...`` or a local path."""
    if uri.startswith("models:/"):
        return RegistrySource(uri, tracking_uri)
    return FileSource(uri)

