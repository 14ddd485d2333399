"""Which frozen EfficientNet-Lite image embedding should the linear probe use? (dev split only)

Extracts pooled features of every stage of the ImageNet EfficientNet-Lite trunk for the ELPV
*train pool* (never the test split), then runs the product's linear probe protocol (K shots +
K validation images per class, C chosen on validation) and scores on the rest of the train pool
(the dev split). Reports balanced accuracy mean ± std over seeds for each embedding.

    python experiments/backbone/feature_probe.py --nets lite0 --sizes 224 300 --seeds 1-10
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def trunk(net: str):
    from adapt.core.imagenet import load_imagenet_trunk

    return load_imagenet_trunk(net)


@torch.no_grad()
def extract(net: str, size: int, images, batch: int = 32) -> dict[str, np.ndarray]:
    from adapt.contract.imageio import to_model_pixels

    model = trunk(net).eval()
    feats: dict[str, list] = {}
    for start in range(0, len(images), batch):
        px = np.stack([to_model_pixels(images.load(i), size) for i in range(start, min(start + batch, len(images)))])
        x = (torch.from_numpy(px).permute(0, 3, 1, 2).float() - 127.0) / 128.0
        final, inter = model.forward_intermediates(x)
        for k, f in enumerate(inter):
            feats.setdefault(f"s{k}avg", []).append(f.mean((2, 3)))
            feats.setdefault(f"s{k}max", []).append(f.amax((2, 3)))
        feats.setdefault("head", []).append(model.forward_head(final, pre_logits=True))
    return {k: torch.cat(v).numpy() for k, v in feats.items()}


def combine(feats: dict, names: list[str]) -> np.ndarray:
    parts = [F.normalize(torch.from_numpy(feats[n]), dim=-1) for n in names]
    return F.normalize(torch.cat(parts, dim=1), dim=-1).numpy()


def merge(a, b):
    from adapt.data.sources import merge_image_sets

    return merge_image_sets(a, b)


def probe(x: np.ndarray, y: np.ndarray, shots: int, seed: int, scored: np.ndarray | None = None) -> float:
    """Fit on K per class, choose C on K more (both from the indices outside ``scored``), score
    on ``scored`` (default: every index not drawn)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(seed)
    tr, va = [], []
    pool = np.ones(len(y), bool)
    if scored is not None:
        pool[scored] = False
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero((y == c) & pool))
        tr += idx[:shots].tolist()
        va += idx[shots : 2 * shots].tolist()
    dev = np.setdiff1d(np.arange(len(y)), tr + va) if scored is None else scored
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in np.logspace(-2, 4, 13):
            m = LogisticRegression(C=c, max_iter=2000).fit(x[tr], y[tr])
            score = balanced_accuracy_score(y[va], m.predict(x[va]))
            if best is None or score > best[0]:
                best = (score, m)
    return float(balanced_accuracy_score(y[dev], best[1].predict(x[dev])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="elpv")
    ap.add_argument("--nets", nargs="+", default=["lite0"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[224, 300])
    ap.add_argument("--shots", nargs="+", type=int, default=[4, 16])
    ap.add_argument("--seeds", default="1-10")
    ap.add_argument("--cache", default="/tmp/feature_probe")
    ap.add_argument("--out", default=None)
    ap.add_argument("--score-on", choices=("dev", "test"), default="dev",
                    help="dev: the rest of the train pool (ELPV); test: the folder's test split (a check folder, not ELPV)")
    args = ap.parse_args()
    from adapt.data import load_dataset

    lo, hi = (int(t) for t in args.seeds.split("-"))
    seeds = range(lo, hi + 1)
    data = load_dataset(args.data)
    pool = data.train if args.score_on == "dev" else merge(data.train, data.test)
    y = np.asarray(pool.labels)
    scored = None if args.score_on == "dev" else np.arange(len(data.train), len(pool))
    combos = {
        "head (final 1280)": ["head"],
        "stage4 avg": ["s4avg"],
        "stage3 avg": ["s3avg"],
        "stage3+4 avg": ["s3avg", "s4avg"],
        "stage2+3+4 avg": ["s2avg", "s3avg", "s4avg"],
        "stage3+4+head avg": ["s3avg", "s4avg", "head"],
        "stage3+4 avg+max": ["s3avg", "s4avg", "s3max", "s4max"],
        "stage2+3+4 avg+max": ["s2avg", "s3avg", "s4avg", "s2max", "s3max", "s4max"],
    }
    rows = []
    for net, size in itertools.product(args.nets, args.sizes):
        path = Path(args.cache) / f"{Path(args.data).name.replace(':', '-')}-{net}-{size}.npz"
        if path.is_file():
            feats = dict(np.load(path))
        else:
            t0 = time.perf_counter()
            feats = extract(net, size, pool)
            print(f"{net}@{size}: features of {len(pool)} images in {time.perf_counter() - t0:.0f} s", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **feats)
        for name, parts in combos.items():
            x = combine(feats, parts)
            for shots in args.shots:
                scores = [probe(x, y, shots, s, scored) for s in seeds]
                rows.append({"net": net, "size": size, "embedding": name, "shots": shots,
                             "mean": float(np.mean(scores)), "std": float(np.std(scores)), "seeds": len(scores)})
                print(f"{net}@{size} {name:24s} {shots:2d}-shot: {100 * np.mean(scores):.1f} ± {100 * np.std(scores):.1f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
