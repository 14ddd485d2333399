"""AdaBN on ELPV: re-estimate the image trunk's batch-norm statistics on unlabeled in-domain cells.

The cheapest use of unlabeled images (Li et al. 2016, "Revisiting batch normalization for
practical domain adaptation"): no training, one forward pass. The ImageNet statistics of every
BatchNorm layer are replaced by those of the unlabeled cells; weights stay as they are. Writes an
open_clip state dict that ``--pretrained FILE`` (and ``extract.py``) load.

``--exclude-dev`` leaves out the dev split of ``semisup_study.py`` (25% of the train pool, stratified
by defect level x module type, seed 1234), so the dev numbers stay clean; without it the whole
train pool is used (the product setting; the test split never is).

    python experiments/unlabeled/adabn.py --exclude-dev --out /tmp/adabn-dev.bin
    python experiments/unlabeled/extract.py --pretrained /tmp/adabn-dev.bin --out experiments/unlabeled/cache/adabn-dev.npz
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--exclude-dev", action="store_true")
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()

    from adapt.core.classifier import PixelNormalizer
    from adapt.core.features import load_pixels
    from adapt.data.elpv import level_index, load_elpv, read_labels
    from adapt.data.images import stratified_split
    from adapt.pipelines.default_backbone import load_backbone

    t0 = time.perf_counter()
    backbone = load_backbone()
    pool = load_elpv("elpv").train
    if args.exclude_dev:
        keys, probs, types = read_labels()
        index = {k: i for i, k in enumerate(keys)}
        idx = np.array([index[k] for k in pool.keys])
        strata = np.array([f"{a}-{b}" for a, b in zip(level_index(probs[idx]), types[idx])])
        rest, _dev = stratified_split(strata, 0.25, seed=1234)
        pool = pool.subset(rest)
    trunk = backbone.model.visual.trunk
    norms = [m for m in trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch
    pixels = load_pixels(pool, backbone.image_size, backbone.resize_mode)
    normalize = PixelNormalizer(backbone.mean, backbone.std)
    trunk.train()
    with torch.no_grad():
        for i in range(0, len(pixels), args.batch):
            trunk.forward_features(normalize(pixels[i : i + args.batch]))
    trunk.eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(backbone.model.state_dict(), args.out)
    print(f"{args.out}: batch-norm statistics of {len(norms)} layers from {len(pool)} unlabeled cells, {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
