"""Augmented training views for the linear probe: a dev-split study (issue 21; results: aug_views.md).

    export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
    PYTHONPATH=/tmp/skimg python experiments/backbone/drawn_defects.py --out /tmp/aug_dev/drawn100 --seed 100
    PYTHONPATH=/tmp/skimg python experiments/backbone/drawn_defects.py --out /tmp/aug_dev/tw101 --seed 101 --kinds ok orientation scale contrast blur
    python experiments/fewshot/aug_views.py --copies 1 --data /tmp/aug_dev/drawn100 --shots 16 --seeds 1-6 --out /tmp/aug_dev/study
    python experiments/fewshot/aug_views.py --copies 1 --data /tmp/aug_dev/tw101 --shots 16 --seeds 1-4 --extract-seeds 1-10 --out /tmp/aug_dev/study
    python experiments/fewshot/aug_views.py --copies 1 --data elpv --dev 600 --shots 16 --seeds 1-4 --out /tmp/aug_dev/study
    python experiments/fewshot/aug_views.py --report /tmp/aug_dev/study/aug_views.jsonl

Same dev data, few-shot draws and frozen features as ``linear_recipe.py`` (its ``load_study``: the
ELPV train pool's fixed 600-image dev subset, or a drawn-defect folder of generator seed >= 100
whose test/ is the dev split; never a test split). Baseline ``none`` = today's product recipe
(``--method linear`` defaults): every labelled image enters the fit as its 8 dihedral views,
avg + max pooled stage features, C by repeated stratified 4-fold x 2 over all 2K labelled images
(balanced accuracy, then log-loss), refit on all; the prediction is the head on the normalised mean
feature of the first 4 dihedral views (``tta_views=4``; as in ``linear_recipe.py``, features and
that mean are not renormalised, which shifts the effective C grid relative to the product's by a
constant factor).

The variants add ``--copies`` augmented copies of each *labelled* image as extra training rows
(each copy again as its 8 dihedral views; test-time prediction unchanged):

- ``geo``: random shift up to 6 % of the side and scale 0.9-1.1 (a window of the reflect-padded
  image, resized back);
- ``photo``: brightness and contrast (around the mean) each x U(0.85, 1.15), and with probability
  1/2 a Gaussian blur of sigma U(0.5, 1) px at the image's own resolution (no colour jitter);
- ``both``: ``geo`` then ``photo``;
- ``cv``: per fit, the variant among {none, geo, photo, both} (with its C) that the same
  cross-validation that picks C ranks best (ties: the earlier one in that order).

Every fit is a cold L-BFGS fit (max_iter 2000), as in the product: warm-starting along the C grid
was 3x faster but, the high-C fits stopping short of the optimum, it chose other Cs and moved the
baseline by up to 4 points, so it was dropped.
A fold keeps every view and copy of an image on its side; held-out images are scored on their
original (unaugmented) 4-view mean feature. An augmented copy's random draws depend only on the
image (its key), the variant and the copy number (``numpy`` generator seeded with those), so runs
reproduce and a copy's features are computed once for every seed that draws the image.
Features of the copies go through ``linear_recipe.extract`` (the same code path); cached in ``--out``.

One JSON line per (data, shots, seed) in ``DIR/aug_views.jsonl``: dev balanced accuracy per variant,
chosen C, ``cv pick`` and the wall seconds of each variant's choose-C-and-refit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import RepeatedStratifiedKFold

sys.path.insert(0, str(Path(__file__).parent))
from linear_recipe import C_GRID, extract, load_study, score  # noqa: E402

AUGS = ("geo", "photo", "both")
VARIANTS = ("none", *AUGS)
TTA = 4


def geometric(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    s = rng.uniform(0.9, 1.1)
    dx, dy = rng.uniform(-0.06, 0.06, 2) * (w, h)
    a = np.asarray(img)
    pad = int(0.2 * max(w, h)) + 2
    a = np.pad(a, ((pad, pad), (pad, pad)) + ((0, 0),) * (a.ndim - 2), mode="reflect")
    cx, cy, ww, hh = w / 2 + dx + pad, h / 2 + dy + pad, w / s, h / s
    return Image.fromarray(a).resize((w, h), Image.BILINEAR, box=(cx - ww / 2, cy - hh / 2, cx + ww / 2, cy + hh / 2))


def photometric(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    b, c = rng.uniform(0.85, 1.15, 2)
    a = np.asarray(img).astype(np.float32)
    a = ((a - a.mean()) * c + a.mean()) * b
    out = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.5, 1.0)))
    return out


def augment(img: Image.Image, variant: str, key: str, copy: int) -> Image.Image:
    rng = np.random.default_rng([zlib.crc32(key.encode()), AUGS.index(variant), copy])
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    if variant in ("geo", "both"):
        img = geometric(img, rng)
    if variant in ("photo", "both"):
        img = photometric(img, rng)
    return img


class Augmented:
    """What ``extract`` reads (``len`` and ``load``): copy ``j`` of image ``idx[i]``."""

    def __init__(self, images, idx, variant: str, copies: int) -> None:
        self.images, self.variant = images, variant
        self.items = [(int(i), j) for i in idx for j in range(copies)]

    def __len__(self) -> int:
        return len(self.items)

    def load(self, n: int) -> Image.Image:
        i, j = self.items[n]
        return augment(self.images.load(i), self.variant, str(self.images.keys[i]), j)


def study_images(data_name: str):
    """The image set ``load_study`` indexes (same order)."""
    from adapt.data import load_dataset
    from adapt.data.sources import merge_image_sets

    data = load_dataset(data_name)
    return data.train if data_name.startswith("elpv") else merge_image_sets(data.train, data.test)


def aug_features(data_name, need, variant, copies, out: Path) -> dict[int, np.ndarray]:
    """``{image index: [copies, 8, D]}`` avg + max pooled features of the augmented copies, cached."""
    cache = out / f"aug-{data_name.replace('/', '_').replace(':', '-')}-{variant}-x{copies}.npz"
    have: dict[int, np.ndarray] = {}
    if cache.is_file():
        z = np.load(cache)
        have = {int(i): f for i, f in zip(z["idx"], z["feats"])}
    todo = [int(i) for i in need if int(i) not in have]
    if todo:
        from adapt.defaults import DEFAULT_ARCH
        from adapt.pipelines.default_backbone import load_backbone

        backbone = load_backbone(DEFAULT_ARCH, "default")
        print(f"  {variant}: {len(todo)} images x {copies} copies", flush=True)
        f = extract(backbone, Augmented(study_images(data_name), todo, variant, copies))["max"]
        f = f.reshape(len(todo), copies, *f.shape[1:])
        have.update({i: f[n] for n, i in enumerate(todo)})
        idx = np.array(sorted(have))
        np.savez(cache, idx=idx, feats=np.stack([have[i] for i in idx]))
    return have


def fit(x, y, c, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)


def rows(base, aug, idx, y):
    """Training rows of images ``idx``: 8 dihedral views of each, plus 8 views of each augmented copy."""
    x = [base[idx].reshape(-1, base.shape[2])]
    yy = [np.repeat(y, base.shape[1])]
    if aug is not None:
        a = np.stack([aug[int(i)] for i in idx])  # [n, copies, 8, D]
        x.append(a.reshape(-1, a.shape[-1]))
        yy.append(np.repeat(y, a.shape[1] * a.shape[2]))
    return np.concatenate(x), np.concatenate(yy)


def head_inputs(base, idx):
    """The mean feature of the first 4 dihedral views, as ``linear_recipe.predict`` (not renormalised:
    the harness's features are 6 concatenated unit vectors, norm sqrt(6), in training and here alike)."""
    return base[idx, :TTA].mean(axis=1)


def run_seed(base, augs, labels, pool, dev_idx, seed, folds=4, repeats=2) -> dict:
    y = labels[pool]
    k = int(min(folds, np.bincount(y)[np.bincount(y) > 0].min()))
    splits = list(RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed).split(pool, y))
    out, cv = {}, {}
    for v in VARIANTS:
        t = time.perf_counter()
        aug = augs.get(v)
        scores = np.zeros((len(C_GRID), 2))
        for tr, te in splits:
            x, yy = rows(base, aug, pool[tr], y[tr])
            h = head_inputs(base, pool[te])
            for j, c in enumerate(C_GRID):
                scores[j] += score(fit(x, yy, c, seed).predict_proba(h), y[te])
        best = max(range(len(C_GRID)), key=lambda j: tuple(scores[j]))
        x, yy = rows(base, aug, pool, y)
        probs = fit(x, yy, C_GRID[best], seed).predict_proba(head_inputs(base, dev_idx))
        out[v] = balanced_accuracy_score(labels[dev_idx], probs.argmax(1))
        out[f"C {v}"] = float(C_GRID[best])
        out[f"cv {v}"] = float(scores[best][0] / len(splits))
        out[f"s {v}"] = round(time.perf_counter() - t, 2)
        cv[v] = tuple(scores[best])
    pick = max(VARIANTS, key=lambda v: cv[v])  # first of the best in VARIANTS order
    out["cv"] = out[pick]
    out["cv pick"] = pick
    return out


def report(path: Path) -> str:
    rs_all = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in rs_all:
        groups.setdefault((r["data"], r["shots"]), []).append(r)
    cols = [*VARIANTS, "cv"]
    lines = ["| data | shots | seeds | " + " | ".join(cols) + " | cv picks | s/fit " + "/".join(VARIANTS) + " |",
             "|---|---|---|" + "---|" * (len(cols) + 2)]
    for (data, shots), rs in groups.items():
        base = np.array([r["none"] for r in rs]) * 100
        cells = []
        for v in cols:
            a = np.array([r[v] for r in rs]) * 100
            g = a - base
            cells.append(f"{a.mean():.1f} ± {a.std(ddof=1) if len(a) > 1 else 0:.1f}" + ("" if v == "none" else f" ({g.mean():+.1f} ± {g.std(ddof=1) if len(g) > 1 else 0:.1f})"))
        picks = {v: sum(r["cv pick"] == v for r in rs) for v in VARIANTS}
        secs = "/".join(f"{np.mean([r[f's {v}'] for r in rs]):.0f}" for v in VARIANTS)
        lines.append(f"| {data} | {shots} | {len(rs)} | " + " | ".join(cells) + " | " + " ".join(f"{v}:{n}" for v, n in picks.items() if n) + f" | {secs} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", default=None, help="print the table of an aug_views.jsonl and exit")
    ap.add_argument("--data")
    ap.add_argument("--dev", type=int, default=600)
    ap.add_argument("--shots", type=int, nargs="+", default=[16])
    ap.add_argument("--seeds", default="1-10")
    ap.add_argument("--copies", type=int, default=2, help="augmented copies per labelled image and variant")
    ap.add_argument("--extract-seeds", default=None, help="seeds whose draws to compute features for (default: --seeds; "
                    "a superset lets a later run with more seeds reuse the cache)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.report:
        print(report(Path(args.report)))
        return 0
    if not args.data or not args.out:
        ap.error("--data and --out are required")
    a, _, b = args.seeds.partition("-")
    seeds = list(range(int(a), int(b or a) + 1))
    a, _, b = (args.extract_seeds or args.seeds).partition("-")
    all_seeds = sorted(set(seeds) | set(range(int(a), int(b or a) + 1)))
    out = Path(args.out)
    feats, labels, draws, dev_idx, tag = load_study(args.data, args.shots, all_seeds, out, dev=args.dev)
    base = feats["max"]  # the product's pooling: avg + max
    need = np.unique(np.concatenate([np.concatenate(d) for d in draws.values()]))
    augs = {v: aug_features(args.data, need, v, args.copies, out) for v in AUGS}
    for shots in args.shots:
        for seed in seeds:
            tr, va = draws[shots, seed]
            res = run_seed(base, augs, labels, np.concatenate([tr, va]), dev_idx, seed)
            rec = {"data": args.data + tag, "shots": shots, "seed": seed, "copies": args.copies, **res}
            with (out / "aug_views.jsonl").open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
