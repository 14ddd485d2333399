"""How the linear probe should use its 2K labelled images: a dev-split study (issue 21, item 1-2).

    python experiments/fewshot/linear_recipe.py --data elpv --dev 600 --shots 4 16 --seeds 1-10 --out DIR
    python experiments/fewshot/linear_recipe.py --data /tmp/drawn_dev --shots 16 --seeds 1-10 --out DIR

Only *dev* data is read: for ELPV a fixed stratified subset of the train pool (``--dev`` images,
never the test split) is scored on and the K + K few-shot images are drawn from the rest of the
pool with the product's ``few_shot_split``; for a folder (a drawn-defect folder made with a
generator seed >= 100, which nothing is reported on) the few-shot images come from its train/ and
its test/ is the dev split.

Frozen features of the default backbone (stages 2-4 of the EfficientNet trunk, each pooled and
L2-normalised, as ``adapt.core.encoders`` computes them) for the 8 dihedral views of every image
(quarter turns x horizontal flip), computed once. Recipes compared, all choosing C on the labelled
images only:

- ``product``: today's ``--method linear``: fit on the K training images, C by balanced accuracy
  (then log-loss) on the K validation images;
- ``cv-refit``: C by repeated stratified 4-fold over all 2K images, then refit on all of them;
- ``+aug8``: every labelled image enters the fit as its 8 dihedral views (folds keep an image's
  views together);
- ``+tta2`` / ``+tta8``: the prediction is the mean probability over 2 (identity, flip) or 8 views;
- ``max``: the same with average *and* max pooled stage maps.

Writes one JSON line per (data, shots, seed, recipe) to ``DIR/linear_recipe.jsonl`` and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, log_loss
from sklearn.model_selection import RepeatedStratifiedKFold

C_GRID = np.logspace(-2, 4, 13)


def views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 dihedral views of ``[N, 3, H, W]``: identity first, its horizontal flip second."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(2, 3))
        out += [r, torch.flip(r, dims=(3,))]
    return [out[0], out[1], *out[2:]]


@torch.no_grad()
def extract(backbone, images, batch: int = 32) -> dict[str, np.ndarray]:
    """``{"avg": [N, 8, D], "max": [N, 8, D]}``: per-stage pooled, L2-normalised features of every view."""
    from adapt.contract.imageio import to_model_pixels
    from adapt.core.classifier import PixelNormalizer

    trunk = backbone.model.visual.trunk.eval()
    norm = PixelNormalizer(backbone.mean, backbone.std)
    stages = list(backbone.feature_stages)
    avg, mx = [], []
    t = time.perf_counter()
    for start in range(0, len(images), batch):
        px = torch.from_numpy(np.stack([to_model_pixels(images.load(i), backbone.image_size, backbone.resize_mode)
                                        for i in range(start, min(start + batch, len(images)))]))
        x = norm(px)
        a_v, m_v = [], []
        for v in views(x):
            _, maps = trunk.forward_intermediates(v.contiguous(memory_format=torch.channels_last), indices=stages, stop_early=True)
            a_v.append(torch.cat([F.normalize(m.mean(dim=(2, 3)), dim=-1) for m in maps], 1))
            m_v.append(torch.cat([F.normalize(m.amax(dim=(2, 3)), dim=-1) for m in maps], 1))
        avg.append(torch.stack(a_v, 1))
        mx.append(torch.stack(m_v, 1))
        done = min(start + batch, len(images))
        print(f"  features {done}/{len(images)} ({done * 8 / (time.perf_counter() - t):.0f} views/s)", flush=True)
    a, m = torch.cat(avg).numpy(), torch.cat(mx).numpy()
    return {"avg": a, "max": np.concatenate([a, m], axis=2)}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def fit(x, y, c, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)


def score(probs, y) -> tuple[float, float]:
    return balanced_accuracy_score(y, probs.argmax(1)), -log_loss(y, np.clip(probs, 1e-7, 1), labels=np.arange(probs.shape[1]))


def predict(model, feats: np.ndarray, tta: int) -> np.ndarray:
    """The head on the mean feature of the first ``tta`` views of ``feats`` ``[N, 8, D]`` (= mean logits:
    what an encoder that averages its views computes inside the ONNX graph)."""
    return model.predict_proba(feats[:, :tta].mean(axis=1))


def train_rows(feats, idx, y, aug: int):
    """Training rows: each image's first ``aug`` views; ``aug=-8`` = one row, the mean of its 8 views."""
    if aug < 0:
        return feats[idx][:, :-aug].mean(axis=1), y
    x = feats[idx][:, :aug].reshape(-1, feats.shape[2])
    return x, np.repeat(y, aug)


def choose_c_cv(feats, idx, y, aug, tta, seed, folds=4, repeats=2) -> float:
    k = int(min(folds, np.bincount(y).min()))
    if k < 2:
        return 1.0
    splitter = RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed)
    scores = np.zeros((len(C_GRID), 2))
    for tr, te in splitter.split(idx, y):
        x, yy = train_rows(feats, idx[tr], y[tr], aug)
        for j, c in enumerate(C_GRID):
            scores[j] += score(predict(fit(x, yy, c, seed), feats[idx[te]], tta), y[te])
    best = max(range(len(C_GRID)), key=lambda j: tuple(scores[j]))
    return float(C_GRID[best])


def run_recipes(feats_by_kind, labels, train_idx, val_idx, dev_idx, seed, only: tuple[int, ...] = ()) -> dict[str, float]:
    """Every recipe's dev balanced accuracy (``only``: just today's product default, ``cv-refit+aug8+ttaN max``, for these N)."""
    y_tr, y_va, y_dev = labels[train_idx], labels[val_idx], labels[dev_idx]
    out = {}
    f = feats_by_kind["avg"]
    best = None  # product: C on the validation split
    for c in C_GRID:
        m = fit(f[train_idx, 0], y_tr, c, seed)
        s = score(m.predict_proba(f[val_idx, 0]), y_va)
        if best is None or s > best[0]:
            best = (s, c, m)
    out["product"] = balanced_accuracy_score(y_dev, best[2].predict_proba(f[dev_idx, 0]).argmax(1))
    pool = np.concatenate([train_idx, val_idx])
    y_pool = labels[pool]
    for kind in ("avg", "max"):
        f = feats_by_kind[kind]
        for aug, tta, name in ((1, 1, "cv-refit"), (8, 1, "cv-refit+aug8"), (8, 2, "cv-refit+aug8+tta2"), (8, 4, "cv-refit+aug8+tta4"), (8, 8, "cv-refit+aug8+tta8"), (-8, 8, "cv-refit+sym8")):
            if (kind == "max" and aug == 1) or (only and (kind, aug) != ("max", 8)) or (only and tta not in only):
                continue
            c = choose_c_cv(f, pool, y_pool, aug, tta, seed)
            x, yy = train_rows(f, pool, y_pool, aug)
            probs = predict(fit(x, yy, c, seed), f[dev_idx], tta)
            out[name if kind == "avg" else f"{name} max"] = balanced_accuracy_score(y_dev, probs.argmax(1))
            out[f"C {name} {kind}"] = c
    return out


def report(path: Path) -> str:
    """Markdown table: balanced accuracy mean ± std over seeds, and the mean paired gain over ``product``."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["shots"]), []).append(r)
    recipes = list(dict.fromkeys(k for r in rows for k in r if k not in ("data", "shots", "seed") and not k.startswith("C ")))
    lines = ["| data | shots | seeds | " + " | ".join(recipes) + " |", "|---|---|---|" + "---|" * len(recipes)]
    for (data, shots), rs in groups.items():
        cells = []
        for k in recipes:
            have = [r for r in rs if k in r]
            if not have:
                cells.append("")
                continue
            v = np.array([r[k] for r in have]) * 100
            gain = v - np.array([r["product"] for r in have]) * 100
            cells.append(f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:.1f}" + ("" if k == "product" else f" ({gain.mean():+.1f})"))
        lines.append(f"| {data} | {shots} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_study(data_name: str, shots_list, seeds, out: Path, dev: int = 600, size: int | None = None):
    """(features by pooling ``{"avg", "max"}: [N, 8, D]``, labels ``[N]``, ``{(shots, seed): (train idx,
    val idx)}``, dev indices, a tag naming the resolution): the few-shot draws of the product's
    ``few_shot_split`` and the frozen features of every image they and the dev split need, cached in ``out``."""
    torch.set_num_threads(2)
    from adapt.data import few_shot_split, load_dataset
    from adapt.data.images import stratified_split
    from adapt.defaults import DEFAULT_ARCH
    from adapt.pipelines.default_backbone import load_backbone

    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(data_name)
    if data_name.startswith("elpv"):
        pool_all = data.train
        rest, dev_part = stratified_split(pool_all.labels, dev / len(pool_all), seed=12345)
        images = pool_all
        dev_idx = np.asarray(dev_part)
        draw_pool = pool_all.subset(rest)
        draw_map = np.asarray(rest)  # draw_pool index -> images index
    else:  # a dev folder: few-shot images from train/, scored on test/
        from adapt.data.sources import merge_image_sets

        images = merge_image_sets(data.train, data.test)
        draw_map = np.arange(len(data.train))
        draw_pool = images.subset(draw_map)  # keys as in ``images`` (absolute paths)
        dev_idx = np.arange(len(data.train), len(images))
    where = {k: i for i, k in enumerate(images.keys)}
    draws = {}
    for shots in shots_list:
        for seed in seeds:
            split = few_shot_split(draw_pool, shots, seed)
            draws[shots, seed] = (np.array([where[k] for k in split.train.keys]), np.array([where[k] for k in split.val.keys]))
    need = np.unique(np.concatenate([dev_idx, *[np.concatenate(d) for d in draws.values()]]))
    size_tag = f"-{size}px" if size else ""
    cache = out / f"features-{data_name.replace('/', '_').replace(':', '-')}{size_tag}.npz"
    feats = {}
    if cache.is_file():
        stored = dict(np.load(cache))
        if set(need) <= set(stored["have"].tolist()):
            feats = {k: v for k, v in stored.items() if k != "have"}
    if not feats:
        backbone = load_backbone(DEFAULT_ARCH, "default")
        if size:
            backbone = dataclasses.replace(backbone, image_size=size)
        sub = extract(backbone, images.subset(need))
        for k, v in sub.items():
            full = np.zeros((len(images), *v.shape[1:]), np.float32)
            full[need] = v
            feats[k] = full
        np.savez(cache, have=need, **feats)
    return feats, np.asarray(images.labels), draws, dev_idx, size_tag


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", default=None, help="print the table of a linear_recipe.jsonl and exit")
    ap.add_argument("--data", help="elpv, elpv:4class, or a drawn-defect folder with train/ and test/")
    ap.add_argument("--dev", type=int, default=600, help="ELPV: size of the dev subset of the train pool")
    ap.add_argument("--shots", type=int, nargs="+", default=[16])
    ap.add_argument("--seeds", default="1-10")
    ap.add_argument("--out")
    ap.add_argument("--size", type=int, default=None, help="input resolution of the trunk (default: the backbone's, 224)")
    ap.add_argument("--only-default", type=int, nargs="*", default=None, metavar="TTA",
                    help="only the product's default recipe with these test-time views (none given: 8), and `product`, the old one")
    args = ap.parse_args(argv)
    if args.report:
        print(report(Path(args.report)))
        return 0
    if not args.data or not args.out:
        ap.error("--data and --out are required")
    a, _, b = args.seeds.partition("-")
    seeds = list(range(int(a), int(b or a) + 1))
    out = Path(args.out)
    feats, labels, draws, dev_idx, size_tag = load_study(args.data, args.shots, seeds, out, dev=args.dev, size=args.size)
    rows = out / "linear_recipe.jsonl"
    for shots in args.shots:
        for seed in seeds:
            tr, va = draws[shots, seed]
            res = run_recipes(feats, labels, tr, va, dev_idx, seed, only=tuple(args.only_default or [8]) if args.only_default is not None else ())
            rec = {"data": args.data + size_tag, "shots": shots, "seed": seed, **res}
            with rows.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
