"""Unlabeled images of a line: what ``--unlabeled`` (retrain) and ``pretrain --objective ssl --data`` read.

Forms of ``spec``: a folder (every image under it, recursively; sub-folder names are ignored),
a CSV with a ``path`` column (paths relative to the CSV; other columns ignored), or ``elpv``
(the images of the ELPV training pool, never its test split). ``exclude`` removes any image that
is also in a held-out set (same resolved file, or same content), so an unlabeled folder that
overlaps the test split cannot leak it into training.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path

import numpy as np

from adapt.contract.digest import file_sha256
from adapt.data.images import ImageSet
from adapt.errors import DataError
from adapt.contract.imageio import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

UNLABELED = ("unlabeled",)


def load_unlabeled(spec: str | Path, exclude: ImageSet | None = None) -> ImageSet:
    """The images of ``spec`` (see module docstring) as one ``ImageSet`` with a dummy class, minus ``exclude``."""
    text = str(spec)
    if text.split(":", 1)[0].lower() == "elpv" and not Path(text).exists():
        from adapt.data.elpv import load_elpv

        pool = load_elpv(text).train
        images = ImageSet(pool.keys, np.zeros(len(pool), dtype=np.int64), UNLABELED, pool.root, pool.loader, pool.digest)
    else:
        path = Path(text).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            root = path.resolve()
            keys = tuple(f.resolve().relative_to(root).as_posix() for f in files)
        elif path.is_file() and path.suffix.lower() == ".csv":
            root = path.parent.resolve()
            keys = tuple(_csv_paths(path))
        else:
            raise DataError(f"unlabeled images not found: {text} (expected a folder, a CSV with a 'path' column, or 'elpv')")
        images = ImageSet(keys, np.zeros(len(keys), dtype=np.int64), UNLABELED, root=str(root))
    if exclude is not None and len(exclude):
        images = _without(images, exclude)
    if not len(images):
        raise DataError(f"no unlabeled images in {text}")
    return images


def _csv_paths(manifest: Path) -> list[str]:
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        if "path" not in (reader.fieldnames or []):
            raise DataError(f"{manifest}: an unlabeled manifest needs a 'path' column")
        paths = [(row.get("path") or "").strip() for row in reader]
    missing = [p for p in paths if p and not (manifest.parent / p).is_file()]
    if missing:
        raise DataError(f"{manifest}: image not found: {missing[0]}")
    return [Path(p).as_posix() for p in paths if p]


def _content(root: str, key: str) -> str:
    try:
        return file_sha256(Path(root) / key)
    except OSError:
        return ""


def _without(images: ImageSet, held_out: ImageSet) -> ImageSet:
    """``images`` minus every image that is a held-out one (same file, or same bytes)."""
    held_paths = {str((Path(held_out.root) / k).resolve()) for k in held_out.keys}
    keep = [i for i, k in enumerate(images.keys) if str((Path(images.root) / k).resolve()) not in held_paths]
    if Path(held_out.root).is_dir() and Path(images.root).is_dir() and Path(images.root).resolve() != Path(held_out.root).resolve():
        held_bytes = {_content(held_out.root, k) for k in held_out.keys} - {""}
        keep = [i for i in keep if _content(images.root, images.keys[i]) not in held_bytes]
    dropped = len(images) - len(keep)
    if dropped:
        logger.warning("left out %d unlabeled image(s) that are held-out test images", dropped)
    return images.subset(keep) if dropped else images


def unlabeled_fingerprint(images: ImageSet) -> str:
    """Identity of an unlabeled set: which images, by file name and content digest (order-free, and
    the same for a folder and a CSV that list the same files)."""
    h = hashlib.sha256()
    for item in sorted(f"{Path(key).name}\x1f{images.digest(images.root, key)}" for key in images.keys):
        h.update(item.encode() + b"\x1e")
    return h.hexdigest()[:16]
