"""A labelled folder that is not ELPV: real texture photos with drawn defects (ok + 3 defect kinds).

The product's choices (default backbone, pooled mid-level features) were made on ELPV; this folder
checks that they carry over to other surfaces. The photos are scikit-image's bundled real texture
photographs (brick wall, grass, gravel, the moon's surface; 512 x 512 grayscale), which an
experiment-only ``pip install scikit-image`` brings. Each image is a random crop (scale, position,
flip, quarter turn) of one photo, with one drawn defect or none:

- ``scratch``: a thin, nearly straight bright or dark line;
- ``spot``: a blurred dark or bright blob;
- ``crack``: a jagged dark polyline.

``--kinds`` also takes *texture-wide* defects (no local mark: a slight change of the whole surface,
over the whole image or, half of the time, over a large region of it: a half plane with a soft edge,
so no sharp border becomes a local mark):

- ``orientation``: the texture turned by 10-25 degrees (the good crops only take quarter turns/flips);
- ``scale``: the texture photographed 1.6-2x closer or farther than any good crop (density);
- ``contrast``: contrast around the mean lowered to 55-70% or raised to 140-170%;
- ``blur``: a Gaussian blur of radius 1-1.8 px (at 192 px).

    pip install scikit-image       # or: pip install --no-deps --target /tmp/skimg scikit-image lazy_loader imageio tifffile
    python experiments/backbone/drawn_defects.py --out /tmp/drawn     # writes train/ and test/
    python experiments/backbone/drawn_defects.py --out /tmp/tw --kinds ok orientation scale contrast blur
    adapt retrain --data /tmp/drawn --method linear --shots 16 --seed 1 --no-tracking

Seeds (experiments/anomaly/README.md): folders to *choose* settings on use generator seeds >= 100;
folders to *report* on use seeds below 100 (0, 11, 5, 21); no setting is chosen on a report folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("ok", "scratch", "spot", "crack")  # the default: local marks
TEXTURE_WIDE = ("orientation", "scale", "contrast", "blur")
KINDS = CLASSES + TEXTURE_WIDE
GOOD_SCALE = (0.8, 1.6)  # crop side / image size of good crops (texture-wide "scale" leaves this range)
PHOTOS = ("brick", "grass", "gravel", "moon")


def photos(names=PHOTOS) -> dict[str, Image.Image]:
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()).convert("L") for name in names}


def crop(photo: Image.Image, size: int, rng: np.random.Generator, scale: float | None = None, turn: float = 0.0) -> Image.Image:
    """A random square crop resized to ``size``, flipped and quarter-turned; its side is a draw from
    GOOD_SCALE x size, or ``scale`` x size; ``turn`` degrees: a larger crop turned, then its centre."""
    u = rng.uniform(*GOOD_SCALE)
    side = int(size * (u if scale is None else scale))
    grab = min(int(side * (abs(np.cos(np.radians(turn))) + abs(np.sin(np.radians(turn))))) + 2, min(photo.size) - 1) if turn else side
    x, y = (int(rng.integers(0, photo.width - grab)), int(rng.integers(0, photo.height - grab)))
    img = photo.crop((x, y, x + grab, y + grab))
    if turn:
        m = (grab - side) // 2
        img = img.rotate(turn, resample=Image.Resampling.BICUBIC).crop((m, m, m + side, m + side))
    img = img.resize((size, size), Image.Resampling.BICUBIC)
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


def region(size: int, rng: np.random.Generator) -> np.ndarray:
    """``[size, size]`` weights in [0, 1]: the whole image, or (half of the time) a half plane through a
    point near the centre with a soft edge (covering 30-70% of the image)."""
    if rng.random() < 0.5:
        return np.ones((size, size), np.float32)
    angle, offset = rng.uniform(0, 2 * np.pi), rng.uniform(-0.2, 0.2) * size
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    side = xx * np.cos(angle) + yy * np.sin(angle) - offset
    return (1 / (1 + np.exp(-side / (0.04 * size)))).astype(np.float32)


def texture_wide(photo: Image.Image, kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A crop of ``photo`` with a texture-wide defect ``kind`` (TEXTURE_WIDE) over the whole image or a large region."""
    scale, turn = None, 0.0
    if kind == "scale":  # closer (coarser) or farther (denser) than any good crop
        scale = rng.uniform(GOOD_SCALE[0] / 2, GOOD_SCALE[0] / 1.6) if rng.random() < 0.5 else rng.uniform(GOOD_SCALE[1] * 1.3, 2.6)
    elif kind == "orientation":
        turn = float(rng.choice([-1, 1]) * rng.uniform(10, 25))
    state = rng.bit_generator.state
    good = np.asarray(crop(photo, size, rng), dtype=np.float32)
    if kind in ("orientation", "scale"):  # the same draws again: the same place of the photo, changed
        rng.bit_generator.state = state
        changed = np.asarray(crop(photo, size, rng, scale=scale, turn=turn), dtype=np.float32)
    elif kind == "contrast":
        factor = rng.uniform(0.55, 0.7) if rng.random() < 0.5 else rng.uniform(1.4, 1.7)
        changed = good.mean() + (good - good.mean()) * factor
    elif kind == "blur":
        changed = np.asarray(Image.fromarray(good.astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 1.8))), dtype=np.float32)
    else:
        raise ValueError(f"not a texture-wide kind: {kind}")
    w = region(size, rng)
    return Image.fromarray(np.clip(good * (1 - w) + changed * w, 0, 255).astype(np.uint8))


def make(photo: Image.Image, kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    if kind in TEXTURE_WIDE:
        return texture_wide(photo, kind, size, rng)
    return draw_defect(crop(photo, size, rng), kind, rng)


def write(out: Path, train_per_class: int, test_per_class: int, size: int, seed: int, names=PHOTOS, kinds=CLASSES) -> Path:
    rng = np.random.default_rng(seed)
    sources = photos(names)
    names = list(sources)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for kind in kinds:
            folder = out / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                photo = sources[names[i % len(names)]]
                make(photo, kind, size, rng).save(folder / f"{kind}_{i:03d}.png")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-per-class", type=int, default=48)
    ap.add_argument("--test-per-class", type=int, default=60)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--photos", nargs="+", default=list(PHOTOS), choices=PHOTOS, help="surfaces to crop from (one = a single-surface line)")
    ap.add_argument("--kinds", nargs="+", default=list(CLASSES), choices=KINDS, help="classes to write (the first is the good one, 'ok')")
    args = ap.parse_args()
    print(write(Path(args.out), args.train_per_class, args.test_per_class, args.size, args.seed, tuple(args.photos), tuple(args.kinds)))


if __name__ == "__main__":
    main()
