"""Data sources: turn what the user passes as ``--data`` into train pool + held-out test split.

Forms of ``spec``:
- a folder ``ROOT/<label>/*.png|jpg|...`` (``ROOT/train`` + ``ROOT/test`` if both exist, else
  a stratified split with a fixed seed);
- a CSV manifest ``path,label[,split]`` (paths relative to the CSV);
- ``elpv`` / ``elpv:4class`` / ``elpv:mono`` / ``elpv:poly`` (combinable, e.g.
  ``elpv:4class:mono``): the ELPV solar-cell set with its fixed test split;
- ``synthetic`` or ``synthetic:good,scratch,crack`` (class list): the procedural generator.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from adapt.contract.imageio import IMAGE_EXTENSIONS, ImageDecodeError, read_image
from adapt.data.images import DatasetSplits, ImageSet, stratified_split
from adapt.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_TEST_FRACTION = 0.25


def load_dataset(
    spec: str | Path,
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    check_images: bool = True,
    strict: bool = False,
) -> DatasetSplits:
    """Resolve ``spec`` (see module docstring) to a ``DatasetSplits``.

    ``check_images`` decodes every user-supplied file once up front: unreadable ones are skipped
    with a warning naming each file, or raise ``DataError`` when ``strict``.
    """
    text = str(spec)
    head = text.split(":", 1)[0].lower()
    if head == "elpv" and not Path(text).exists():
        from adapt.data.elpv import load_elpv

        return load_elpv(text)
    if head == "synthetic" and not Path(text).exists():
        from adapt.data.synthetic.source import load_synthetic

        return load_synthetic(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"dataset not found: {text} (expected a folder, a CSV manifest, 'elpv[...]' or 'synthetic')")
    if path.is_dir():
        splits = _load_folder(path, test_fraction)
    elif path.suffix.lower() == ".csv":
        splits = _load_csv(path, test_fraction)
    else:
        raise DataError(f"{path} is neither a folder nor a .csv manifest")
    if check_images:
        (train, bad_train), (test, bad_test) = _drop_unreadable(splits.train, strict), _drop_unreadable(splits.test, strict)
        _report_unreadable(bad_train + bad_test, splits.train, splits.test)
        splits = DatasetSplits(splits.name, train, test)
    return splits


def load_all_images(spec: str | Path, strict: bool = False) -> ImageSet:
    """Every labelled image of a folder or CSV (no held-out split), e.g. an operator-feedback store."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"extra training data not found: {spec}")
    if path.is_dir():
        labelled = _scan_labels(path)
        if not labelled:
            raise DataError(f"no labelled images in {path} (expected {path}/<label>/*.png)")
        images = _from_files(labelled, tuple(sorted(labelled)), path)
    elif path.suffix.lower() == ".csv":
        splits = _load_csv(path, test_fraction=0.5)
        images = merge_image_sets(splits.train, splits.test)
    else:
        raise DataError(f"{path} is neither a folder nor a .csv manifest")
    readable, unreadable = _drop_unreadable(images, strict)
    _report_unreadable(unreadable, images)
    return readable


def merge_image_sets(first: ImageSet, second: ImageSet) -> ImageSet:
    """One set of file images from two (keys become absolute paths); classes are the union."""
    for images in (first, second):
        if not Path(images.root).is_dir():
            raise DataError(f"only file-based datasets can be merged, not {images.root}")
    classes = tuple(dict.fromkeys((*first.classes, *second.classes)))
    keys, labels = [], []
    for images in (first, second):
        remap = np.array([classes.index(c) for c in images.classes])
        keys += [str((Path(images.root) / k).resolve()) for k in images.keys]
        labels += remap[images.labels].tolist() if len(images) else []
    return ImageSet(tuple(keys), np.array(labels, dtype=np.int64), classes, root="/")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _scan_labels(folder: Path) -> dict[str, list[Path]]:
    labelled = {d.name: _images_in(d) for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    return {label: files for label, files in labelled.items() if files}


def _load_folder(root: Path, test_fraction: float) -> DatasetSplits:
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = _scan_labels(root / "train"), _scan_labels(root / "test")
        if not train:
            raise DataError(f"no labelled images in {root / 'train'} (expected {root / 'train'}/<label>/*.png)")
        classes = tuple(sorted(set(train) | set(test)))
        return DatasetSplits(root.name, _from_files(train, classes, root), _from_files(test, classes, root))
    labelled = _scan_labels(root)
    if not labelled:
        exts = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise DataError(f"no labelled images in {root} (expected {root}/<label>/*.{{{exts}}})")
    classes = tuple(sorted(labelled))
    return _stratified(root.name, _from_files(labelled, classes, root), test_fraction)


def _from_files(labelled: dict[str, list[Path]], classes: tuple[str, ...], root: Path) -> ImageSet:
    keys, labels = [], []
    for label, files in labelled.items():
        for f in files:
            keys.append(f.resolve().relative_to(root.resolve()).as_posix())
            labels.append(classes.index(label))
    return ImageSet(tuple(keys), np.array(labels, dtype=np.int64), classes, root=str(root.resolve()))


def _load_csv(manifest: Path, test_fraction: float) -> DatasetSplits:
    root = manifest.parent.resolve()
    rows = []
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{manifest}: missing column(s) {', '.join(sorted(missing))} (expected path,label[,split])")
        for line, row in enumerate(reader, start=2):
            path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not path or not label:
                raise DataError(f"{manifest}:{line}: empty path or label")
            if not (root / path).is_file():
                raise DataError(f"{manifest}:{line}: image not found: {path}")
            rows.append((path, label, (row.get("split") or "").strip().lower()))
    if not rows:
        raise DataError(f"{manifest}: no rows")
    classes = tuple(sorted({label for _, label, _ in rows}))
    keys = tuple(Path(p).as_posix() for p, _, _ in rows)
    labels = np.array([classes.index(label) for _, label, _ in rows])
    everything = ImageSet(keys, labels, classes, root=str(root))
    splits = np.array([s for _, _, s in rows])
    if "val" in set(splits):  # would silently train on them: validation images come out of the train rows
        line = 2 + int(np.flatnonzero(splits == "val")[0])
        raise DataError(f"{manifest}:{line}: split 'val' is not supported: mark rows train or test "
                        "(the validation images are drawn from the train rows, per class)")
    unknown = set(splits) - {"", "train", "test"}
    if unknown:
        raise DataError(f"{manifest}: unknown split value(s) {sorted(unknown)} (use train or test)")
    if (splits == "test").any():
        test_mask = splits == "test"
        return DatasetSplits(manifest.stem, everything.subset(np.flatnonzero(~test_mask)), everything.subset(np.flatnonzero(test_mask)))
    return _stratified(manifest.stem, everything, test_fraction)


def _stratified(name: str, everything: ImageSet, test_fraction: float) -> DatasetSplits:
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction must be between 0 and 1, got {test_fraction}")
    counts = everything.class_counts()
    too_small = [c for c, n in counts.items() if n < 2]
    if too_small:
        raise DataError(
            f"class '{too_small[0]}' has {counts[too_small[0]]} image(s); at least 2 are needed to hold one out for testing"
        )
    try:
        train, test = stratified_split(everything.labels, test_fraction)
    except ValueError as exc:
        raise DataError(f"cannot split {name} into train/test: {exc}") from exc
    return DatasetSplits(name, everything.subset(train), everything.subset(test))


def _drop_unreadable(images: ImageSet, strict: bool) -> tuple[ImageSet, Counter]:
    """``images`` without the files that cannot be decoded (each named in a warning), and how
    many were dropped per class; ``DataError`` on the first one when ``strict``."""
    good, dropped = [], Counter()
    for i in range(len(images)):
        try:
            read_image(Path(images.root) / images.keys[i])
        except ImageDecodeError as exc:
            if strict:
                raise DataError(str(exc)) from exc
            logger.warning("skipping unreadable image %s", exc)
            dropped[images.classes[images.labels[i]]] += 1
            continue
        good.append(i)
    return (images.subset(good) if dropped else images), dropped


def _report_unreadable(dropped: Counter, *parts: ImageSet) -> None:
    """One summary line for a dataset: unreadable images per class, out of that class's images."""
    if not dropped:
        return
    totals = Counter()
    for part in parts:
        totals.update(part.class_counts())
    per_class = ", ".join(f"{c}: {dropped[c]} of {totals[c]}" for c in parts[0].classes if dropped[c])
    logger.warning("skipped %d unreadable image(s) of %d (%s)", sum(dropped.values()), sum(totals.values()), per_class)
