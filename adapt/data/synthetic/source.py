"""``--data synthetic[:class,class,...][@SIZE]``: a labelled split of the procedural generator.

Images are rendered on demand from their key (``<class>/<index>``), so nothing is written to
disk and the same spec always gives the same pixels.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from adapt.data.images import DatasetSplits, ImageSet
from adapt.data.synthetic.wording import class_description
from adapt.data.synthetic.defects import DEFECTS, GOOD
from adapt.data.synthetic.render import render_sample
from adapt.errors import DataError

DEFAULT_CLASSES = ("good", "scratch", "crack", "spot")
TRAIN_PER_CLASS = 48
TEST_PER_CLASS = 24
TRAIN_SEED, TEST_SEED = 1000, 2000  # disjoint generator streams
IMAGE_SIZE = 64
CLASS_STRIDE = 100_000


def _render(seed: int, size: int, root: str, key: str):
    label, index = key.split("/")
    defect = GOOD if label == "good" else label
    offset = (1 + (GOOD, *DEFECTS).index(defect)) * CLASS_STRIDE  # classes never share a render
    return render_sample(seed, offset + int(index), size, defect=defect).image


def _digest(root: str, key: str) -> str:
    return key  # deterministic generator: the key is the content


def _split(classes: tuple[str, ...], per_class: int, seed: int, size: int) -> ImageSet:
    keys = [f"{c}/{i}" for c in classes for i in range(per_class)]
    labels = np.repeat(np.arange(len(classes)), per_class)
    return ImageSet(
        tuple(keys), labels, classes, root=f"synthetic:{seed}:{size}", loader=partial(_render, seed, size), digest=_digest
    )


def load_synthetic(spec: str = "synthetic") -> DatasetSplits:
    body = spec.split(":", 1)[1] if ":" in spec else ""
    size = IMAGE_SIZE
    if "@" in body:
        body, size_text = body.rsplit("@", 1)
        size = int(size_text)
    classes = tuple(c.strip() for c in body.split(",") if c.strip()) or DEFAULT_CLASSES
    known = {"good", *DEFECTS}
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise DataError(f"unknown synthetic class(es) {unknown}; known: {sorted(known)}")
    train = _split(classes, TRAIN_PER_CLASS, TRAIN_SEED, size)
    test = _split(classes, TEST_PER_CLASS, TEST_SEED, size)
    descriptions = {c: class_description(c) for c in classes}
    return DatasetSplits(f"synthetic:{','.join(classes)}@{size}", train, test, descriptions=descriptions)
