"""Checks of what the user typed that answer in milliseconds, before a command imports torch,
open_clip or MLflow (8-19 s on a small machine): paths that do not exist, empty folders,
malformed ``models:/`` URIs, a registry store that is not there. Each raises ``AdaptError``
with a one-line reason; the deeper checks (image decoding) stay where they are. A ``models:/``
name, alias or version is looked up through MLflow's client before torch is imported.
"""

from __future__ import annotations

from pathlib import Path

from adapt.errors import AdaptError, DataError
from adapt.contract.imageio import IMAGE_EXTENSIONS

DATA_KEYWORDS = ("elpv", "synthetic")  # --data elpv[:4class][:mono|:poly], synthetic[:a,b,c]
WEIGHT_KEYWORDS = ("default", "imagenet", "none")
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")


def is_data_keyword(spec: str) -> bool:
    """``elpv[...]`` / ``synthetic[...]`` (unless a file or folder of that name exists)."""
    return spec.split(":", 1)[0].lower() in DATA_KEYWORDS and not Path(spec).exists()


def check_data(spec: str, option: str = "--data") -> None:
    """A labelled dataset: a folder with images, a .csv manifest, or a keyword."""
    if is_data_keyword(spec):
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"{option}: dataset not found: {spec} (expected a folder, a CSV manifest, 'elpv[...]' or 'synthetic')")
    if path.is_dir():
        if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*")):
            exts = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
            raise DataError(f"{option}: no images in {spec} (expected {spec}/<label>/*.{{{exts}}})")
    elif path.suffix.lower() != ".csv":
        raise DataError(f"{option}: {spec} is neither a folder nor a .csv manifest")


def check_manifests(specs: list[str], option: str = "--data") -> None:
    """Pretraining sources: the ones named like manifest files (.csv, .jsonl) must exist."""
    for spec in specs:
        if Path(spec).suffix.lower() in (".csv", ".jsonl", ".json") and not Path(spec).expanduser().is_file():
            raise DataError(f"{option}: manifest not found: {spec}")


def check_file(path: str | None, option: str) -> None:
    if path and not Path(path).expanduser().is_file():
        raise AdaptError(f"{option}: no such file: {path}")


def check_weights(pretrained: str, option: str = "--pretrained") -> None:
    """A path-like ``--pretrained`` value must exist (tags and keywords are checked later)."""
    text = pretrained.strip()
    if text.lower() in WEIGHT_KEYWORDS or text.startswith("hf-hub:"):
        return
    looks_like_path = "/" in text or text.startswith(("~", ".")) or text.lower().endswith(WEIGHT_SUFFIXES)
    if looks_like_path and not Path(text).expanduser().exists():
        raise AdaptError(f"{option}: weights not found: {pretrained} (pass a checkpoint file or folder, "
                         f"{', '.join(WEIGHT_KEYWORDS)}, or an open_clip tag)")


def check_model(uri: str, tracking_uri: str | None, option: str = "--model", registered: bool = True) -> None:
    """A model URI: ``models:/...`` well-formed with a store that exists (and, for an embedded
    store with ``registered``, naming a model, version or alias that is there), or an existing path."""
    if uri.startswith("models:/"):
        from dataclasses import astuple

        from adapt.contract.model_uri import parse_model_uri
        from adapt.tracking.store import resolve_tracking_uri, sqlite_path

        name, alias, version = astuple(parse_model_uri(uri))
        store = resolve_tracking_uri(tracking_uri)
        db = sqlite_path(store)
        if db is not None and not db.expanduser().is_file():
            raise AdaptError(f"{option} {uri}: no MLflow store at {db} (pass --tracking-uri or set MLFLOW_TRACKING_URI)")
        if db is not None and registered:
            from adapt.tracking.registry import check_registered

            check_registered(store, name, alias, version, f"{option} {uri}")
        return
    if not Path(uri).expanduser().exists():
        raise AdaptError(f"model not found: {uri} (expected models:/NAME@ALIAS, models:/NAME/VERSION, a run folder or a model file)")


def check_output_folder(path: str | None, option: str) -> None:
    """The folder a new output file goes into must exist."""
    if path and not Path(path).expanduser().resolve().parent.is_dir():
        raise AdaptError(f"{option}: folder {Path(path).parent} does not exist")
