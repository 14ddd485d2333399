"""Resolve a model URI to local files.

Forms: ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` (MLflow registry), a run directory
written by ``adapt retrain`` (holding ``model.onnx`` and ``classifier.pt``), an ``.onnx`` file
or a ``classifier.pt`` file.
"""

from __future__ import annotations

from pathlib import Path

from adapt.contract.model_uri import ONNX_FILE, TORCH_FILE, LocalModel
from adapt.errors import AdaptError


def resolve_model(uri: str, tracking_uri: str | None = None) -> LocalModel:
    if uri.startswith("models:/"):
        from adapt.tracking.registry import fetch_registered

        return fetch_registered(uri, tracking_uri)
    path = Path(uri).expanduser()
    if path.is_dir():
        onnx_path, torch_path = _find(path, ONNX_FILE, "*.onnx"), _find(path, TORCH_FILE, "*.pt")
        if onnx_path is None and torch_path is None:
            raise AdaptError(f"no {ONNX_FILE} or {TORCH_FILE} in {path}")
        return LocalModel(onnx_path, torch_path, name=path.name, version="local", uri=uri)
    if path.is_file():
        if path.suffix == ".onnx":
            sibling = path.parent / TORCH_FILE
            return LocalModel(path, sibling if sibling.is_file() else None, name=path.stem, version="local", uri=uri)
        if path.suffix in (".pt", ".pth"):
            sibling = path.parent / ONNX_FILE
            return LocalModel(sibling if sibling.is_file() else None, path, name=path.stem, version="local", uri=uri)
        raise AdaptError(f"{path}: expected an .onnx or classifier .pt file")
    raise AdaptError(f"model not found: {uri} (expected models:/NAME@ALIAS, models:/NAME/VERSION, a run folder or a model file)")


def _find(folder: Path, name: str, pattern: str) -> Path | None:
    if (folder / name).is_file():
        return folder / name
    found = sorted(folder.rglob(pattern))
    return found[0] if found else None
