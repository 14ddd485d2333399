"""Data sources, held-out splits, few-shot sampling and their error messages."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from adapt.data import few_shot_split, load_dataset
from adapt.errors import DataError
from conftest import write_brightness_folder

pytestmark = pytest.mark.unit


def test_folder_split_is_stratified_and_fixed(brightness_folder):
    a, b = load_dataset(brightness_folder), load_dataset(brightness_folder)
    assert a.classes == ("bright", "dark")
    assert a.test.keys == b.test.keys and a.fingerprint() == b.fingerprint()
    assert a.test.class_counts() == {"bright": 3, "dark": 3}
    assert not set(a.train.keys) & set(a.test.keys)
    assert len(a.train) + len(a.test) == 24


def test_train_and_test_subfolders_are_the_split(tmp_path):
    write_brightness_folder(tmp_path / "d" / "train", per_class=5)
    write_brightness_folder(tmp_path / "d" / "test", per_class=2, seed=1)
    splits = load_dataset(tmp_path / "d")
    assert len(splits.train) == 10 and len(splits.test) == 4
    assert all(k.startswith("test/") for k in splits.test.keys)


def test_csv_manifest_with_and_without_split(brightness_folder):
    rows = ["path,label,split"]
    for i, p in enumerate(sorted(brightness_folder.rglob("*.png"))):
        rows.append(f"{p.relative_to(brightness_folder).as_posix()},{p.parent.name},{'test' if i % 4 == 0 else 'train'}")
    (brightness_folder / "m.csv").write_text("\n".join(rows) + "\n")
    splits = load_dataset(brightness_folder / "m.csv")
    assert len(splits.test) == 6 and len(splits.train) == 18
    (brightness_folder / "n.csv").write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")
    assert len(load_dataset(brightness_folder / "n.csv").test) == 6


def test_a_val_split_in_a_csv_is_an_error_not_silently_training_data(brightness_folder):
    rows = ["path,label,split"]
    for i, p in enumerate(sorted(brightness_folder.rglob("*.png"))):
        rows.append(f"{p.relative_to(brightness_folder).as_posix()},{p.parent.name},{('test', 'train', 'val')[i % 3]}")
    (brightness_folder / "v.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"v.csv:4: split 'val' is not supported: mark rows train or test"):
        load_dataset(brightness_folder / "v.csv")


def test_csv_errors_name_the_line(brightness_folder):
    (brightness_folder / "bad.csv").write_text("path,label\ndark/dark_000.png,dark\nmissing.png,dark\n")
    with pytest.raises(DataError, match=r"bad.csv:3: image not found: missing.png"):
        load_dataset(brightness_folder / "bad.csv")
    (brightness_folder / "cols.csv").write_text("file,label\n")
    with pytest.raises(DataError, match="missing column"):
        load_dataset(brightness_folder / "cols.csv")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root, "dataset not found"),
        (lambda root: (root.mkdir(), root)[1], "no labelled images"),
        (lambda root: ((root / "a").mkdir(parents=True), (root / "a" / "x.txt").write_text("hi"), root)[2], "no labelled images"),
    ],
)
def test_missing_or_empty_data_is_a_clear_error(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_dataset(make(tmp_path / "data"))


def test_corrupt_image_is_skipped_with_a_warning_naming_it(brightness_folder, caplog):
    (brightness_folder / "dark" / "broken.png").write_bytes(b"\x89PNG garbage")
    with caplog.at_level(logging.WARNING):
        splits = load_dataset(brightness_folder)
    assert "broken.png" in caplog.text
    assert all("broken" not in k for k in splits.train.keys + splits.test.keys)
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert summaries == ["skipped 1 unreadable image(s) of 25 (dark: 1 of 13)"]  # the whole dataset, once
    assert len(splits.train) + len(splits.test) == 24
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(brightness_folder, strict=True)


def test_unreadable_images_are_counted_per_class_across_both_splits(brightness_folder, caplog):
    broken = [brightness_folder / "dark" / f"broken{i}.png" for i in range(3)] + [brightness_folder / "bright" / "bad.jpg"]
    for path in broken:
        path.write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING):
        splits = load_dataset(brightness_folder)
    per_file = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping unreadable image")]
    assert sorted(p.name for p in broken if any(p.name in m for m in per_file)) == sorted(p.name for p in broken)
    assert len(per_file) == 4
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert summaries == ["skipped 4 unreadable image(s) of 28 (bright: 1 of 13, dark: 3 of 15)"]
    assert splits.train.class_counts()["dark"] + splits.test.class_counts()["dark"] == 12


def test_class_with_one_image_cannot_be_held_out(brightness_folder):
    (brightness_folder / "rare").mkdir()
    (brightness_folder / "dark" / "dark_000.png").rename(brightness_folder / "rare" / "only.png")
    with pytest.raises(DataError, match="class 'rare' has 1 image"):
        load_dataset(brightness_folder)


def test_few_shot_split_is_seeded_disjoint_and_names_small_classes(brightness_folder):
    pool = load_dataset(brightness_folder).train  # 9 per class
    a, b, c = few_shot_split(pool, 4, seed=1), few_shot_split(pool, 4, seed=1), few_shot_split(pool, 4, seed=2)
    assert a.train.keys == b.train.keys and a.train.keys != c.train.keys
    assert a.train.class_counts() == {"bright": 4, "dark": 4}
    assert not set(a.train.keys) & set(a.val.keys)
    assert a.val.class_counts() == {"bright": 4, "dark": 4}
    with pytest.raises(DataError, match=r"class '(bright|dark)' has 9 training image\(s\), fewer than --shots 10"):
        few_shot_split(pool, 10, seed=1)


def test_elpv_fixed_test_split():
    binary = load_dataset("elpv")
    assert (len(binary.train), len(binary.test)) == (1968, 656)
    defective = binary.test.class_counts()["defective"] / len(binary.test)
    assert abs(defective - 0.3125) < 0.005  # majority-class accuracy 68.8%
    four = load_dataset("elpv:4class")
    assert four.test.keys == binary.test.keys and len(four.classes) == 4
    mono, poly = load_dataset("elpv:mono"), load_dataset("elpv:poly")
    assert set(mono.test.keys) | set(poly.test.keys) == set(binary.test.keys)
    assert not set(mono.test.keys) & set(poly.test.keys)
    assert not set(binary.train.keys) & set(binary.test.keys)
    with pytest.raises(DataError, match="unknown ELPV option"):
        load_dataset("elpv:3class")


def test_elpv_images_load_as_rgb():
    img = load_dataset("elpv").test.load(0)
    assert img.mode == "RGB" and img.size == (300, 300)
    assert np.asarray(img).std() > 0


def test_synthetic_source_is_deterministic():
    a, b = load_dataset("synthetic:good,crack@32"), load_dataset("synthetic:good,crack@32")
    assert a.classes == ("good", "crack")
    assert np.array_equal(np.asarray(a.train.load(3)), np.asarray(b.train.load(3)))
    assert a.test.load(0).size == (32, 32)
    with pytest.raises(DataError, match="unknown synthetic class"):
        load_dataset("synthetic:good,banana")


def test_elpv_write_folder_is_a_folder_dataset_with_the_fixed_test_split(tmp_path):
    from adapt.data.elpv import write_folder

    root = write_folder(tmp_path / "cells", train_per_class=5, seed=0)
    data = load_dataset(str(root))
    elpv = load_dataset("elpv")
    assert sorted(data.train.classes) == sorted(elpv.train.classes)
    assert np.bincount(data.train.labels).tolist() == [5, 5]
    assert len(data.test) == len(elpv.test)
    by_name = {Path(k).name: elpv.test.classes[y] for k, y in zip(elpv.test.keys, elpv.test.labels)}
    assert all(by_name[Path(k).name] == data.test.classes[y] for k, y in zip(data.test.keys, data.test.labels))
