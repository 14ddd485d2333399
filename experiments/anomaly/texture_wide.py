"""Old score (patch memory bank alone) vs texture-wide evidence, in one harness, on dev or test splits.

For every seed: the bank from K good train images and their 8 flips/turns (the product's
``greedy_coreset`` to 8,192 stage-2 patches), validation = ``anomaly_split``'s (K more good + K of
each defect class from the train pool), then every candidate score on the evaluation images:

- ``local``: the product's score before this change (mean of the worst 1% of patch distances);
- ``image[<kind>,<stats>,<levels>]``: the Mahalanobis distance (Ledoit-Wolf covariance of the bank
  images' statistics, the product's ``fit_image_bank``) of per-image statistics of the patch features
  (``mean`` or ``mean_std`` over the grid; of stage 2, or of stages 2 and 3) to the bank images'
  mean (``gaussian``) or to the nearest bank image (``knn``);
- ``max[...]`` / ``sum[...]``: both, each standardised by the good validation images (the product head).

``--raw DIR`` also saves each seed's raw per-image scores of the product default (patch score and
image score ``[gaussian,mean_std,s2+s3]``, unstandardised, of the validation and the evaluation
images, with the labels and kinds) to ``DIR/<data>_<split>_seed<seed>.npz``, so that rules combining
the two can be compared without refitting (``combine_rules.py``).

Evaluation images: ``--split test`` = the dataset's held-out test split (reporting only);
``--split dev`` = train-pool images outside the bank and validation (up to ``--dev-per-class`` per
class), for choosing. Thresholds: ``auto`` (best validation balanced accuracy) and ``good`` (95%
quantile of the good validation scores) from ``choose_threshold``. Every number comes from the
product's head (``PatchCoreHead``) built as ``fit_patchcore`` builds it; features are cached per image.

    OMP_NUM_THREADS=1 python experiments/anomaly/texture_wide.py --data /tmp/dev_mixed --good ok --split dev --seeds 1 2 3
    python experiments/anomaly/texture_wide.py --candidates experiments/anomaly/texture_wide_dev.jsonl
    python experiments/anomaly/texture_wide.py --table experiments/anomaly/texture_wide_test.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from adapt.core.anomaly_head import PatchCoreHead, image_stats
from adapt.core.classifier import PixelNormalizer
from adapt.core.features import load_pixels
from adapt.data import load_dataset
from adapt.data.anomaly import anomaly_split
from adapt.methods.base import AdaptContext
from adapt.methods.configs import PatchCoreConfig
from adapt.methods.patchcore import (bank_dim, choose_threshold, dihedral, fit_image_bank, greedy_coreset, image_scores, patch_encoder,
                                     patch_features, standardise)
from adapt.pipelines.default_backbone import load_backbone

TEXTURE_WIDE = {"orientation", "scale", "contrast", "blur"}


class Features:
    """Patch features (stages 2 and 3) of dataset images, computed once; the bank's take stage 2 only."""

    def __init__(self, backbone, images):
        self.backbone, self.images = backbone, images
        ctx = AdaptContext(backbone=backbone, split=None, progress=False)
        self.encoder = patch_encoder(ctx, PatchCoreConfig(combine="max", image_stages=[3])).eval()
        self.norm = PixelNormalizer(backbone.mean, backbone.std)
        self.dim = bank_dim(self.encoder, 1, backbone.image_size)
        self.cache: dict[tuple[int, bool], torch.Tensor] = {}

    def get(self, idx: np.ndarray, turns: bool = False) -> torch.Tensor:
        todo = [int(i) for i in idx if (int(i), turns) not in self.cache]
        if todo:
            b = self.backbone
            pixels = load_pixels(self.images.subset(np.array(todo)), b.image_size, b.resize_mode, progress=False)
            for j, i in enumerate(todo):
                p = dihedral(pixels[j : j + 1]) if turns else pixels[j : j + 1]
                self.cache[(i, turns)] = patch_features(self.encoder, self.norm, p).half()
        return torch.cat([self.cache[(int(i), turns)] for i in idx]).float()


def auc(y: np.ndarray, s: np.ndarray) -> float | None:
    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None


def evaluate(scores_val, defective_val, scores_eval, kinds, good) -> dict:
    y = (kinds != good).astype(int)
    out = {"auc": auc(y, scores_eval), "kind_auc": {}}
    for k in sorted(set(kinds) - {good}):
        m = (kinds == good) | (kinds == k)
        out["kind_auc"][k] = auc(y[m], scores_eval[m])
    for rule, good_only in (("auto", False), ("good", True)):
        t = choose_threshold(scores_val, defective_val, 0.95, good_only=good_only)
        flagged = scores_eval >= t
        out[f"bacc_{rule}"] = float(((~flagged[y == 0]).mean() + flagged[y == 1].mean()) / 2) if y.any() else None
        out[f"good_recall_{rule}"] = float((~flagged[y == 0]).mean())
    return out


def run_seed(data, feats: Features, good_label: str, shots: int, seed: int, split: str, dev_per_class: int,
             raw: Path | None = None, data_spec: str = "") -> list[dict]:
    a = anomaly_split(data, good_label, shots, seed)
    pool, classes = data.train, data.classes
    key_index = {k: i for i, k in enumerate(pool.keys)}
    bank_idx = np.array([key_index[k] for k in a.split.train.keys])
    val_idx = np.array([key_index[k] for k in a.split.val.keys])
    defective_val = a.split.val.labels != 0
    if split == "dev":
        rng = np.random.default_rng(1000 + seed)
        used = set(bank_idx.tolist()) | set(val_idx.tolist())
        eval_idx = np.concatenate([rng.permutation([i for i in np.flatnonzero(pool.labels == c) if i not in used])[:dev_per_class]
                                   for c in range(len(classes))]).astype(int)
        kinds = np.array([classes[pool.labels[i]] for i in eval_idx])
        eval_feats = feats.get(eval_idx)
    else:
        kinds = np.array(a.test_kinds)
        eval_feats = feats.test.get(np.arange(len(data.test)))
    t0 = time.time()
    train = feats.get(bank_idx, turns=True)
    patches = train[..., : feats.dim].flatten(0, 1)
    keep = greedy_coreset(patches, min(8192, round(0.1 * len(patches))), 0)
    grid = round(train.shape[1] ** 0.5)
    top_k = max(1, round(0.01 * grid * grid))
    local_head = PatchCoreHead(patches[keep], 0.0, 1.0, grid, top_k)
    coreset_s = time.time() - t0
    val = feats.get(val_idx)
    lv, le = image_scores(local_head, val), image_scores(local_head, eval_feats)
    rows = [{"score": "local", "fit_s": round(coreset_s, 1), **evaluate(lv, defective_val, le, kinds, good_label)}]
    for kind, stats, (levels, d) in itertools.product(("gaussian", "knn"), ("mean", "mean_std"), (("s2", feats.dim), ("s2+s3", None))):
        t1 = time.time()
        bank, whiten = fit_image_bank(image_stats(train[..., :d], stats), kind)
        heads = {c: PatchCoreHead(patches[keep], 0.0, 1.0, grid, top_k, combine=c, stats=stats, image_bank=bank, image_whiten=whiten)
                 for c in ("max", "sum")}
        gv, ge = heads["max"].image_distance(val[..., :d]).numpy(), heads["max"].image_distance(eval_feats[..., :d]).numpy()
        gauss_s = time.time() - t1
        rows.append({"score": f"image[{kind},{stats},{levels}]", **evaluate(gv, defective_val, ge, kinds, good_label)})
        norm = (*standardise(lv[~defective_val]), *standardise(gv[~defective_val]))
        for c, head in heads.items():
            head.norm = norm
            sv = head.combined(torch.from_numpy(lv), val[..., :d]).numpy()
            se = head.combined(torch.from_numpy(le), eval_feats[..., :d]).numpy()
            rows.append({"score": f"{c}[{kind},{stats},{levels}]", "fit_s": round(coreset_s + gauss_s, 1), **evaluate(sv, defective_val, se, kinds, good_label)})
        if raw is not None and f"max[{kind},{stats},{levels}]" == CHOSEN:
            raw.mkdir(parents=True, exist_ok=True)
            np.savez(raw_path(raw, data_spec, split, seed), local_val=lv, image_val=gv, defective_val=defective_val,
                     local_eval=le, image_eval=ge, kinds=kinds, good=good_label, data=data_spec, split=split, seed=seed)
    return rows


CHOSEN = "max[gaussian,mean_std,s2+s3]"  # the product default, chosen on the dev rows


def raw_path(raw: Path, data_spec: str, split: str, seed: int) -> Path:
    """Where ``--raw`` keeps one (data, split, seed)'s raw scores."""
    return raw / f"{data_spec.strip('/').replace('/', '_')}_{split}_seed{seed}.npz"


def read_rows(path: Path) -> list[dict]:
    """The rows of a results file, the first of each (data, seed, score) only (a rerun seed is not counted twice)."""
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows.setdefault((r["data"], r["seed"], r["score"]), r)
    return list(rows.values())


def table(path: Path, new: str = CHOSEN) -> str:
    """Per dataset: old (``local``) vs ``new`` score and the image score alone, mean ± std over seeds."""
    rows = read_rows(path)

    def cell(d: str, score: str, key: str) -> str:
        v = [r[key] for r in rows if r["data"] == d and r["score"] == score and r.get(key) is not None]
        return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "-"

    def kinds(d: str, score: str) -> str:
        per = [r["kind_auc"] for r in rows if r["data"] == d and r["score"] == score]
        names = sorted({k for p in per for k in p})
        return ", ".join(f"{k} {np.mean([p[k] for p in per]):.2f}" for k in names)

    lines = ["| data | seeds | ROC-AUC old | ROC-AUC new | image score alone | bal. acc old | bal. acc new | bal. acc new, good-only threshold | "
             "ROC-AUC per kind, old | per kind, new |", "|---|---|---|---|---|---|---|---|---|---|"]
    for d in dict.fromkeys(r["data"] for r in rows):
        n = len({r["seed"] for r in rows if r["data"] == d and r["score"] == new})
        image = "image" + new[new.index("["):]
        lines.append(f"| {d} | {n} | {cell(d, 'local', 'auc')} | **{cell(d, new, 'auc')}** | {cell(d, image, 'auc')} | {cell(d, 'local', 'bacc_auto')} | "
                     f"{cell(d, new, 'bacc_auto')} | {cell(d, new, 'bacc_good')} | {kinds(d, 'local')} | {kinds(d, new)} |")
    return "\n".join(lines)


def candidates(path: Path) -> str:
    """Every candidate's mean ROC-AUC per dataset (for choosing on dev rows)."""
    rows = read_rows(path)
    datas = list(dict.fromkeys(r["data"] for r in rows))
    lines = ["| score | " + " | ".join(datas) + " | mean |", "|---|" + "---|" * (len(datas) + 1)]
    for s in dict.fromkeys(r["score"] for r in rows):
        means = [np.mean([r["auc"] for r in rows if r["data"] == d and r["score"] == s]) for d in datas]
        n = [len([r for r in rows if r["data"] == d and r["score"] == s]) for d in datas]
        lines.append(f"| {s} | " + " | ".join(f"{m:.3f} ({k})" for m, k in zip(means, n)) + f" | {np.mean(means):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data")
    ap.add_argument("--good", default="ok")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument("--dev-per-class", type=int, default=32)
    ap.add_argument("--out", default="")
    ap.add_argument("--raw", type=Path, metavar="DIR", help="also save each seed's raw patch and image scores here (npz; keep it out of the repo)")
    ap.add_argument("--table", metavar="JSONL", help="print old vs new per dataset and exit")
    ap.add_argument("--candidates", metavar="JSONL", help="print every candidate's mean ROC-AUC per dataset and exit")
    args = ap.parse_args()
    if args.table or args.candidates:
        print(table(Path(args.table)) if args.table else candidates(Path(args.candidates)))
        return
    torch.set_num_threads(1)
    backbone = load_backbone("adapt-effnet-lite0", "imagenet")
    data = load_dataset(args.data)
    feats = Features(backbone, data.train)
    feats.test = Features(backbone, data.test)
    for seed in args.seeds:
        t = time.time()
        rows = run_seed(data, feats, args.good, args.shots, seed, args.split, args.dev_per_class, args.raw, args.data)
        for r in rows:
            r.update(data=args.data, split=args.split, seed=seed, shots=args.shots, date=time.strftime("%Y-%m-%d %H:%M"),
                     machine=f"{platform.machine()} 2-core VM shared with other jobs, 1 thread")
            print(json.dumps({k: r[k] for k in ("data", "seed", "score", "auc", "bacc_auto")}), flush=True)
        print(f"seed {seed}: {time.time() - t:.0f}s", flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
