"""Frozen probe features of the whole ELPV set (train pool + fixed test split) for one backbone.

Writes ``OUT.npz`` with ``train``/``test`` features (the ``probe`` encoder: pooled EfficientNet
stages), binary and 4-class labels and module types, so the semi-supervised study
(``semisup_study.py``) runs in seconds per configuration. Features go through the product's
on-disk cache (``adapt.core.features.cached_features``).

    python experiments/unlabeled/extract.py --pretrained default --out experiments/unlabeled/cache/default.npz
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="adapt-effnet-lite0")
    p.add_argument("--pretrained", default="default")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from adapt.core.backbone import create_backbone
    from adapt.data.elpv import level_index, load_elpv, read_labels
    from adapt.core.features import cached_features

    t0 = time.perf_counter()
    backbone = create_backbone(args.backbone, args.pretrained)
    data = load_elpv("elpv")
    spec = backbone.encoder_spec("probe")
    feats = {part: cached_features(backbone, getattr(data, part), spec).numpy() for part in ("train", "test")}
    _, probs, types = read_labels()
    index = {k: i for i, k in enumerate(read_labels()[0])}
    arrays = {}
    for part in ("train", "test"):
        idx = np.array([index[k] for k in getattr(data, part).keys])
        arrays[part] = feats[part]
        arrays[f"{part}_binary"] = (probs[idx] >= 0.5).astype(np.int64)
        arrays[f"{part}_4class"] = level_index(probs[idx])
        arrays[f"{part}_type"] = types[idx]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, weights_id=backbone.weights_id, seconds=time.perf_counter() - t0, **arrays)
    print(f"{args.out}: train {feats['train'].shape}, test {feats['test'].shape}, {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
