"""Does a finer patch grid help PatchCore on the default backbone? Input size (224 vs 320 px) and
stage 1 (stride 4) vs stage 2 (stride 8), chosen on the dev split of the train pool exactly as
``patchcore_probe.py`` does (bank: K good train images + their flips/quarter turns; dev: other
train images), then the best configuration once on the held-out test split.

    python experiments/anomaly/resolution_probe.py --data /tmp/drawn --good ok --shots 16 --dev-per-class 32
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from patchcore_probe import coreset, patches, scores, stage_maps
from sklearn.metrics import roc_auc_score

from adapt.data import load_dataset
from adapt.pipelines.default_backbone import load_backbone

CONFIGS = [((2,), 3, True), ((1,), 3, True), ((1, 2), 3, True)]


def reduce(bank: torch.Tensor, max_bank: int) -> torch.Tensor:
    """10% greedy coreset, at most ``max_bank``; banks over 65,536 patches are first subsampled at
    random (finer grids have up to 800k patches: greedy selection over all would take too long here)."""
    if len(bank) > 65536:
        bank = bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))[:65536]]
    return coreset(bank, min(max_bank, max(1, len(bank) // 10)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--good", required=True)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--dev-per-class", type=int, default=32)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 320])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-bank", type=int, default=8192)
    args = ap.parse_args()
    torch.set_num_threads(2)
    backbone = load_backbone()
    data = load_dataset(args.data)
    good = data.classes.index(args.good)
    rng = np.random.default_rng(args.seed)
    pool_good = rng.permutation(np.flatnonzero(data.train.labels == good))
    defects = [rng.permutation(np.flatnonzero(data.train.labels == c))[: args.dev_per_class] for c in range(len(data.classes)) if c != good]
    bank_idx = pool_good[: args.shots]
    dev_idx = np.concatenate([pool_good[args.shots : args.shots + args.dev_per_class], *defects])
    y_dev = (data.train.labels[dev_idx] != good).astype(int)
    y_test = (data.test.labels != good).astype(int)
    best = None
    for size in args.sizes:
        backbone.image_size = size
        t = time.time()
        maps_train = stage_maps(backbone, data.train)
        maps_bank = stage_maps(backbone, data.train.subset(bank_idx), augment=True)
        for stages, pool, l2 in CONFIGS:
            bank = reduce(patches(maps_bank, stages, pool, l2).flatten(0, 1), args.max_bank)
            dev = patches({s: maps_train[s][dev_idx] for s in stages}, stages, pool, l2)
            auc = roc_auc_score(y_dev, scores(dev, bank))
            row = {"size": size, "stages": stages, "pool": pool, "bank": len(bank), "dev_auc": round(float(auc), 4), "s": round(time.time() - t, 1)}
            print(json.dumps(row), flush=True)
            if best is None or auc > best[0]:
                best = (auc, size, stages, pool, l2)
    auc, size, stages, pool, l2 = best
    backbone.image_size = size
    maps_bank = stage_maps(backbone, data.train.subset(bank_idx), augment=True)
    bank = reduce(patches(maps_bank, stages, pool, l2).flatten(0, 1), args.max_bank)
    test = patches(stage_maps(backbone, data.test), stages, pool, l2)
    print(json.dumps({"chosen": [size, stages, pool], "dev_auc": round(float(auc), 4),
                      "test_auc": round(float(roc_auc_score(y_test, scores(test, bank))), 4)}), flush=True)


if __name__ == "__main__":
    main()
