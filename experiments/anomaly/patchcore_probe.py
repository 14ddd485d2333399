"""Prototype of PatchCore scoring on the default backbone: which stages, local pooling, distance
and coreset size, chosen on a dev split of the train pool, then reported once on the test split.

Dev split (never the test split): the bank is built from K good train-pool images, the dev set is
the remaining train-pool images (good and defective). The held-out numbers use the configuration
with the best dev ROC-AUC.

    python experiments/anomaly/patchcore_probe.py --data /tmp/drawn --good ok --shots 16
    python experiments/anomaly/patchcore_probe.py --data elpv --good functional --shots 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from adapt.pipelines.default_backbone import load_backbone
from adapt.core.classifier import PixelNormalizer
from adapt.data import load_dataset
from adapt.core.features import load_pixels

STAGES = (1, 2, 3)
CONFIGS = [((2,), 3, True), ((2, 3), 3, True), ((2, 3), 3, False), ((2, 3), 1, True), ((1, 2), 3, True)]


def dihedral(pixels: torch.Tensor) -> torch.Tensor:
    """The 8 flips/quarter turns of uint8 [N, H, W, 3] images, stacked: [8N, H, W, 3]."""
    turns = [torch.rot90(pixels, k, dims=(1, 2)) for k in range(4)]
    return torch.cat(turns + [t.flip(2) for t in turns])


@torch.no_grad()
def stage_maps(backbone, images, batch: int = 32, augment: bool = False) -> dict[int, torch.Tensor]:
    pixels = load_pixels(images, backbone.image_size, backbone.resize_mode, progress=False)
    if augment:
        pixels = dihedral(pixels)
    norm = PixelNormalizer(backbone.mean, backbone.std)
    trunk = backbone.model.visual.trunk.eval()
    out = {s: [] for s in STAGES}
    for i in range(0, len(pixels), batch):
        _, maps = trunk.forward_intermediates(norm(pixels[i : i + batch]), indices=list(STAGES), stop_early=True)
        for s, m in zip(STAGES, maps):
            out[s].append(m.half())
    return {s: torch.cat(v) for s, v in out.items()}


def patches(maps, stages, pool: int, l2: bool) -> torch.Tensor:
    """[N, P, D] patch features on the grid of the first stage."""
    grid = maps[stages[0]].shape[-1]
    parts = []
    for s in stages:
        m = maps[s].float()
        if pool > 1:
            m = F.avg_pool2d(m, pool, stride=1, padding=pool // 2, count_include_pad=False)
        if m.shape[-1] != grid:
            m = F.interpolate(m, size=(grid, grid), mode="bilinear", align_corners=False)
        if l2:
            m = F.normalize(m, dim=1)
        parts.append(m)
    x = torch.cat(parts, dim=1)
    return x.flatten(2).transpose(1, 2).contiguous()


def coreset(bank: torch.Tensor, n: int, seed: int = 0, proj_dim: int = 64) -> torch.Tensor:
    """Greedy k-center selection on a random projection (PatchCore's approximate coreset)."""
    if n >= len(bank):
        return bank
    g = torch.Generator().manual_seed(seed)
    proj = bank @ torch.randn(bank.shape[1], proj_dim, generator=g) / proj_dim**0.5
    chosen = [int(torch.randint(len(bank), (1,), generator=g))]
    dist = ((proj - proj[chosen[0]]) ** 2).sum(1)
    for _ in range(n - 1):
        i = int(dist.argmax())
        chosen.append(i)
        dist = torch.minimum(dist, ((proj - proj[i]) ** 2).sum(1))
    return bank[chosen]


def patch_scores(feats: torch.Tensor, bank: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """[N, P] distance of each patch to its nearest bank patch."""
    bb = (bank**2).sum(1)
    out = []
    for i in range(0, len(feats), batch):
        f = feats[i : i + batch].flatten(0, 1)
        d = torch.addmm(bb, f, bank.T, alpha=-2.0)
        d = d.min(-1).values + (f**2).sum(-1)
        out.append(d.clamp_min(0).sqrt().view(-1, feats.shape[1]))
    return torch.cat(out)


def scores(feats: torch.Tensor, bank: torch.Tensor, top: int = 1) -> np.ndarray:
    p = patch_scores(feats, bank)
    return (p.amax(-1) if top == 1 else p.topk(top, dim=-1).values.mean(-1)).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--good", required=True)
    ap.add_argument("--shots", type=int, nargs="+", default=[16])
    ap.add_argument("--dev-per-class", type=int, default=150)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    backbone = load_backbone()
    data = load_dataset(args.data)
    good = data.classes.index(args.good)
    rng = np.random.default_rng(args.seed)
    pool_good = rng.permutation(np.flatnonzero(data.train.labels == good))
    defects = [rng.permutation(np.flatnonzero(data.train.labels == c))[: args.dev_per_class] for c in range(len(data.classes)) if c != good]
    t = time.time()
    maps_pool = stage_maps(backbone, data.train)
    maps_test = stage_maps(backbone, data.test)
    print(f"features {time.time() - t:.0f}s", flush=True)
    y_test = (data.test.labels != good).astype(int)
    rows = []
    for shots in args.shots:
        k = len(pool_good) - args.dev_per_class if shots == 0 else shots
        bank_idx = pool_good[:k]
        dev_idx = np.concatenate([pool_good[k : k + args.dev_per_class], *defects])
        y_dev = (data.train.labels[dev_idx] != good).astype(int)
        maps_aug = stage_maps(backbone, data.train.subset(bank_idx), augment=True) if k <= 64 else None
        best = None
        for (stages, pool, l2), aug in itertools.product(CONFIGS, [False, True] if maps_aug else [False]):
            bank_maps = {s: maps_aug[s] for s in stages} if aug else {s: maps_pool[s][bank_idx] for s in stages}
            bank = patches(bank_maps, stages, pool, l2).flatten(0, 1)
            bank = coreset(bank, 4096) if len(bank) > 20000 else bank
            dev = patches({s: maps_pool[s][dev_idx] for s in stages}, stages, pool, l2)
            aucs = {top: roc_auc_score(y_dev, scores(dev, bank, top)) for top in (1, 10)}
            row = {"shots": k, "stages": stages, "pool": pool, "l2": l2, "aug": aug, "bank": len(bank),
                   "dev_auc_max": round(aucs[1], 4), "dev_auc_top10": round(aucs[10], 4)}
            print(row, flush=True)
            rows.append(row)
            if best is None or aucs[1] > best[0]:
                best = (aucs[1], stages, pool, l2, aug)
        _, stages, pool, l2, aug = best
        bank_maps = {s: maps_aug[s] for s in stages} if aug else {s: maps_pool[s][bank_idx] for s in stages}
        full = patches(bank_maps, stages, pool, l2).flatten(0, 1)
        test_feats = patches({s: maps_test[s] for s in stages}, stages, pool, l2)
        for frac in (0.25, 0.1, 0.01):
            n = max(64, int(frac * len(full)))
            if n > 16384:
                continue
            t = time.time()
            bank = coreset(full, n)
            tc = time.time() - t
            auc = roc_auc_score(y_test, scores(test_feats, bank))
            row = {"shots": k, "chosen": [stages, pool, l2, aug], "coreset": frac, "bank": n, "coreset_s": round(tc, 1), "test_auc": round(auc, 4)}
            print(row, flush=True)
            rows.append(row)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
