"""Which stride-8 patch features for patchcore? Candidate activations of the EfficientNet-Lite trunk,
scored on a dev split of the train pool (never the test split), PatchCore scoring as in the product.

The product's stage-2 feature has 40 channels (the block output of timm's stage 2). Inside the
inverted-residual blocks the same positions carry 6x wider activations; this probe compares them:

- ``s2``: stage-2 block output, 40 channels (the product's current choice);
- ``s2+s3``: plus the stride-16 stage output (112 channels) upsampled (PatchCore's layer2+layer3 analogue);
- ``s2x``: the last stage-2 block's expanded activation after its 5x5 depthwise conv, 240 channels;
- ``s3pw``: the first stride-16 block's pointwise expansion of stage 2 (still stride 8), 240 channels;
- ``s2x+s3x``: ``s2x`` plus the stride-16 stage's last expanded activation (672 channels) upsampled.

Each map: 3x3 neighbourhood average, L2 per position (per part), bank from K good train images and
their 8 flips/quarter turns, greedy coreset to ``--bank`` patches, image score = worst patch.

    python experiments/anomaly/feature_candidates.py --data /tmp/drawn --good ok --shots 16 --dev-per-class 32
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from adapt.core.classifier import PixelNormalizer
from adapt.core.features import load_pixels
from adapt.data import load_dataset
from adapt.methods.patchcore import dihedral, greedy_coreset
from adapt.pipelines.default_backbone import load_backbone

CANDIDATES = {"s2": ("s2",), "s2+s3": ("s2", "s3"), "s2x": ("s2x",), "s3pw": ("s3pw",), "s2x+s3x": ("s2x", "s3x")}


def hooks(trunk) -> dict[str, torch.nn.Module]:
    """Module whose output is each named activation (timm EfficientNet block layout)."""
    blocks = trunk.blocks
    return {"s2": blocks[2], "s3": blocks[4], "s2x": blocks[2][-1].bn2, "s3pw": blocks[3][0].bn1, "s3x": blocks[4][-1].bn2}


@torch.no_grad()
def activations(backbone, pixels: torch.Tensor, names: set[str], batch: int = 16) -> dict[str, torch.Tensor]:
    norm = PixelNormalizer(backbone.mean, backbone.std)
    trunk = backbone.model.visual.trunk.eval()
    got: dict[str, list] = {n: [] for n in names}
    handles = [m.register_forward_hook(lambda _m, _i, out, n=n: got[n].append(out.half())) for n, m in hooks(trunk).items() if n in names]
    try:
        for i in range(0, len(pixels), batch):
            trunk.forward_intermediates(norm(pixels[i : i + batch]), indices=[4], stop_early=True)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in got.items()}


def patches(acts: dict[str, torch.Tensor], parts: tuple[str, ...], idx=None) -> torch.Tensor:
    """[N, P, D] on the grid of the first part."""
    first = acts[parts[0]] if idx is None else acts[parts[0]][idx]
    grid = first.shape[-1]
    out = []
    for p in parts:
        m = (acts[p] if idx is None else acts[p][idx]).float()
        m = F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)
        if m.shape[-1] != grid:
            m = F.interpolate(m, size=(grid, grid), mode="bilinear", align_corners=False)
        out.append(F.normalize(m, dim=1))
    return torch.cat(out, dim=1).flatten(2).transpose(1, 2).contiguous()


def patch_distances(feats: torch.Tensor, bank: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """[N, P] distance of each patch to its nearest bank patch."""
    bb = (bank**2).sum(1)
    out = []
    for i in range(0, len(feats), batch):
        f = feats[i : i + batch]
        d = (f**2).sum(-1, keepdim=True) - 2 * f @ bank.T + bb
        out.append(d.min(-1).values.clamp_min(0).sqrt())
    return torch.cat(out)


# image score from the [N, P] patch distances
SCORES = {
    "max": lambda d: d.amax(-1),
    "max-mean": lambda d: d.amax(-1) - d.mean(-1),
    "max-median": lambda d: d.amax(-1) - d.median(-1).values,
    "max/mean": lambda d: d.amax(-1) / d.mean(-1),
    "top1%-mean": lambda d: d.topk(max(1, d.shape[-1] // 100), -1).values.mean(-1) - d.mean(-1),
    "top1%": lambda d: d.topk(max(1, d.shape[-1] // 100), -1).values.mean(-1),
    "top2%": lambda d: d.topk(max(1, d.shape[-1] // 50), -1).values.mean(-1),
    "top5%": lambda d: d.topk(max(1, d.shape[-1] // 20), -1).values.mean(-1),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--good", required=True)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--dev-per-class", type=int, default=32)
    ap.add_argument("--bank", type=int, default=8192)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    ap.add_argument("--arch", default="adapt-effnet-lite0")
    ap.add_argument("--pretrained", default="imagenet", help="'imagenet' = the default backbone's (locked) image trunk, without its text tower")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    backbone = load_backbone(args.arch, args.pretrained)
    data = load_dataset(args.data)
    good = data.classes.index(args.good)
    names = {p for c in args.candidates for p in CANDIDATES[c]}
    t = time.time()
    pool_acts = activations(backbone, load_pixels(data.train, backbone.image_size, backbone.resize_mode, progress=False), names)
    print(f"pool features {time.time() - t:.0f}s", flush=True)
    rows = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        pool_good = rng.permutation(np.flatnonzero(data.train.labels == good))
        defects = [rng.permutation(np.flatnonzero(data.train.labels == c))[: args.dev_per_class] for c in range(len(data.classes)) if c != good]
        bank_idx = pool_good[: args.shots]
        dev_idx = np.concatenate([pool_good[args.shots : args.shots + args.dev_per_class], *defects])
        y_dev = (data.train.labels[dev_idx] != good).astype(int)
        bank_pixels = dihedral(load_pixels(data.train.subset(bank_idx), backbone.image_size, backbone.resize_mode, progress=False))
        bank_acts = activations(backbone, bank_pixels, names)
        for cand in args.candidates:
            t = time.time()
            parts = CANDIDATES[cand]
            full = patches(bank_acts, parts).flatten(0, 1)
            bank = full[greedy_coreset(full, min(args.bank, len(full)), seed)]
            dist = patch_distances(patches(pool_acts, parts, dev_idx), bank)
            aucs = {name: round(float(roc_auc_score(y_dev, f(dist).numpy())), 4) for name, f in SCORES.items()}
            row = {"data": args.data, "arch": args.arch, "seed": seed, "shots": args.shots, "candidate": cand, "dim": int(full.shape[1]),
                   "bank": len(bank), "dev_auc": aucs, "s": round(time.time() - t, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        with open(args.out, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
