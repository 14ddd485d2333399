"""Labelled image collections: the one in-memory shape every data source is turned into.

An ``ImageSet`` is a list of images (loaded lazily, from files or a generator) with integer
labels over named classes. Keys are portable (paths relative to ``root``, or generator
coordinates) and ``fingerprint`` hashes each image's content (``digest``), so a dataset's
fingerprint is the same on every machine that holds the same images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from adapt.contract.digest import file_sha256
from adapt.contract.imageio import read_image


def _read_file(root: str, key: str) -> Image.Image:
    return read_image(Path(root) / key)


def _file_digest(root: str, key: str) -> str:
    path = Path(root) / key
    try:
        return file_sha256(path)
    except OSError:
        return "missing"


@dataclass(frozen=True)
class ImageSet:
    """Images with labels. ``loader(root, key) -> PIL.Image`` turns a key into an RGB image."""

    keys: tuple[str, ...]
    labels: np.ndarray  # int64 indices into classes
    classes: tuple[str, ...]
    root: str = ""  # folder the keys are relative to (or a generator id)
    loader: Callable[[str, str], Image.Image] = field(default=_read_file, repr=False, compare=False)
    digest: Callable[[str, str], str] = field(default=_file_digest, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64).reshape(-1))
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "classes", tuple(self.classes))
        if len(self.keys) != len(self.labels):
            raise ValueError(f"{len(self.keys)} images but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError("label index out of range of classes")

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, i: int) -> Image.Image:
        return self.loader(self.root, self.keys[i])

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageSet":
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return ImageSet(
            keys=tuple(self.keys[i] for i in idx),
            labels=self.labels[idx],
            classes=self.classes,
            root=self.root,
            loader=self.loader,
            digest=self.digest,
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def fingerprint(self) -> str:
        """Identity of the contents: which images (by content) with which labels over which classes."""
        h = hashlib.sha256("\x1f".join(self.classes).encode())
        for key, label in zip(self.keys, self.labels.tolist()):
            h.update(f"\x1e{key}\x1f{label}\x1f{self.digest(self.root, key)}".encode())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's train pool and held-out test split (the test split is never used for fitting)."""

    name: str
    train: ImageSet
    test: ImageSet
    descriptions: dict[str, str] = field(default_factory=dict)  # class -> words for zero-shot prompts

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    def fingerprint(self) -> str:
        """Identity of the held-out test data: metrics are comparable iff this matches."""
        return self.test.fingerprint()


SPLIT_SEED = 0  # the held-out split never depends on the run's seed


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices of (train, test): stratified by ``labels``, deterministic in ``seed``."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)
