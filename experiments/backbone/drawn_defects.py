"""A labelled folder that is not ELPV: real texture photos with drawn defects (ok + 3 defect kinds).

The product's choices (default backbone, pooled mid-level features) were made on ELPV; this folder
checks that they carry over to other surfaces. The photos are scikit-image's bundled real texture
photographs (brick wall, grass, gravel, the moon's surface; 512 x 512 grayscale), which an
experiment-only ``pip install scikit-image`` brings. Each image is a random crop (scale, position,
flip, quarter turn) of one photo, with one drawn defect or none:

- ``scratch``: a thin, nearly straight bright or dark line;
- ``spot``: a blurred dark or bright blob;
- ``crack``: a jagged dark polyline.

    pip install scikit-image
    python experiments/backbone/drawn_defects.py --out /tmp/drawn     # writes train/ and test/
    adapt retrain --data /tmp/drawn --method linear --shots 16 --seed 1 --no-tracking
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("ok", "scratch", "spot", "crack")
PHOTOS = ("brick", "grass", "gravel", "moon")


def photos(names=PHOTOS) -> dict[str, Image.Image]:
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()).convert("L") for name in names}


def crop(photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    side = int(size * rng.uniform(0.8, 1.6))
    x, y = (int(rng.integers(0, photo.width - side)), int(rng.integers(0, photo.height - side)))
    img = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img.rotate(90 * int(rng.integers(0, 4)))


def draw_defect(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    if kind == "ok":
        return img
    size = img.width
    base = np.asarray(img, dtype=np.float32)
    mean = float(base.mean())
    tone = 20.0 if mean > 128 and kind != "spot" else 235.0
    if kind == "spot":
        tone = 20.0 if rng.random() < 0.5 else 235.0
    layer = Image.new("L", img.size, 0)
    pen = ImageDraw.Draw(layer)
    cx, cy = rng.uniform(0.25, 0.75, 2) * size
    if kind == "scratch":
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.35, 0.6) * size
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        pen.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=int(rng.integers(1, 3)))
    elif kind == "spot":
        r = rng.uniform(0.04, 0.08) * size
        pen.ellipse([cx - r, cy - r * rng.uniform(0.6, 1.0), cx + r, cy + r], fill=255)
        layer = layer.filter(ImageFilter.GaussianBlur(r / 3))
    else:  # crack: a random walk of short segments
        points, angle = [(cx, cy)], rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(6, 11))):
            angle += rng.normal(0, 0.7)
            step = rng.uniform(0.04, 0.08) * size
            points.append((points[-1][0] + np.cos(angle) * step, points[-1][1] + np.sin(angle) * step))
        pen.line(points, fill=255, width=int(rng.integers(2, 4)), joint="curve")
    alpha = np.asarray(layer, dtype=np.float32) / 255.0 * rng.uniform(0.6, 0.9)
    out = base * (1 - alpha) + tone * alpha
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def write(out: Path, train_per_class: int, test_per_class: int, size: int, seed: int, names=PHOTOS) -> Path:
    rng = np.random.default_rng(seed)
    sources = photos(names)
    names = list(sources)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for kind in CLASSES:
            folder = out / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                photo = sources[names[i % len(names)]]
                draw_defect(crop(photo, size, rng), kind, rng).save(folder / f"{kind}_{i:03d}.png")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-per-class", type=int, default=48)
    ap.add_argument("--test-per-class", type=int, default=60)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--photos", nargs="+", default=list(PHOTOS), choices=PHOTOS, help="surfaces to crop from (one = a single-surface line)")
    args = ap.parse_args()
    print(write(Path(args.out), args.train_per_class, args.test_per_class, args.size, args.seed, tuple(args.photos)))


if __name__ == "__main__":
    main()
