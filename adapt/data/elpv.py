"""The ELPV solar-cell dataset (package ``elpv-dataset``): 2,624 electroluminescence images.

Labels: binary ``functional`` (defect probability < 0.5) / ``defective`` (>= 0.5), or the four
probability levels with ``:4class``; ``:mono`` / ``:poly`` keep one module type. The held-out
test split is fixed for every variant: 25% of all cells, stratified by probability level and
module type with seed 0 (656 cells), and nothing may be fitted or chosen on it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from adapt.data.images import DatasetSplits, ImageSet, stratified_split
from adapt.errors import DataError

BINARY_CLASSES = ("functional", "defective")
FOUR_CLASSES = ("functional", "possibly-defective", "likely-defective", "defective")
LEVELS = (0.0, 1 / 3, 2 / 3, 1.0)
DESCRIPTIONS = {
    "functional": "intact solar cell without cracks",
    "possibly-defective": "solar cell with a faint possible crack",
    "likely-defective": "solar cell with a likely crack",
    "defective": "cracked solar cell with dark defective regions",
}
TEST_FRACTION = 0.25
OPTIONS = {"binary", "4class", "mono", "poly"}


def data_dir() -> Path:
    try:
        import elpv_dataset
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise DataError("the ELPV data needs the 'elpv-dataset' package: pip install elpv-dataset") from exc
    return Path(elpv_dataset.__file__).parent / "data"


@lru_cache(maxsize=1)
def read_labels() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(relative image paths, defect probabilities, module types) in the package's order."""
    paths, probs, types = [], [], []
    for line in (data_dir() / "labels.csv").read_text().splitlines():
        if line.strip():
            path, prob, kind = line.split()
            paths.append(path)
            probs.append(float(prob))
            types.append(kind)
    return tuple(paths), np.array(probs), np.array(types)


def level_index(probs: np.ndarray) -> np.ndarray:
    return np.abs(probs[:, None] - np.array(LEVELS)[None, :]).argmin(axis=1)


@lru_cache(maxsize=1)
def fixed_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices (train pool, test) over all 2,624 cells; the same for every ELPV variant."""
    _, probs, types = read_labels()
    strata = np.array([f"{lvl}-{t}" for lvl, t in zip(level_index(probs), types)])
    return stratified_split(strata, TEST_FRACTION, seed=0)


def load_elpv(spec: str = "elpv") -> DatasetSplits:
    options = [o for o in spec.lower().split(":")[1:] if o]
    unknown = set(options) - OPTIONS
    if unknown:
        raise DataError(f"unknown ELPV option(s) {sorted(unknown)} in '{spec}' (use elpv[:4class][:mono|:poly])")
    if {"mono", "poly"} <= set(options):
        raise DataError("choose one of elpv:mono or elpv:poly")
    paths, probs, types = read_labels()
    if "4class" in options:
        classes, labels = FOUR_CLASSES, level_index(probs)
    else:
        classes, labels = BINARY_CLASSES, (probs >= 0.5).astype(np.int64)
    everything = ImageSet(paths, labels, classes, root=str(data_dir()), digest=_package_digest)
    train, test = fixed_split()
    for kind in ("mono", "poly"):
        if kind in options:
            train, test = train[types[train] == kind], test[types[test] == kind]
    name = "elpv" + "".join(f":{o}" for o in options)
    descriptions = {c: DESCRIPTIONS[c] for c in classes}
    return DatasetSplits(name, everything.subset(train), everything.subset(test), descriptions=descriptions)


def _package_digest(root: str, key: str) -> str:
    """ELPV images ship inside a versioned package: name and size identify them without hashing."""
    try:
        return str((Path(root) / key).stat().st_size)
    except OSError:
        return "missing"


def write_folder(root: str | Path, spec: str = "elpv", train_per_class: int = 40, seed: int = 0) -> Path:
    """Copy ELPV cells into the folder-dataset layout: ``ROOT/train/<label>/`` gets
    ``train_per_class`` cells per class drawn from the train pool (seeded), ``ROOT/test/<label>/``
    the whole fixed test split. A real labelled folder to try ``adapt retrain --data ROOT/`` on."""
    import shutil

    data = load_elpv(spec)
    root = Path(root)
    rng = np.random.default_rng(seed)
    for part, images, per_class in (("train", data.train, train_per_class), ("test", data.test, None)):
        for c, label in enumerate(images.classes):
            members = np.flatnonzero(images.labels == c)
            if per_class is not None:
                if len(members) < per_class:
                    raise DataError(f"{spec}: class '{label}' has only {len(members)} train cells (asked {per_class})")
                members = np.sort(rng.choice(members, size=per_class, replace=False))
            folder = root / part / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in members:
                key = images.keys[i]
                shutil.copyfile(Path(images.root) / key, folder / Path(key).name)
    return root
