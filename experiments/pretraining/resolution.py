"""Is input resolution a lever? Linear probe on a randomly initialised adapt-small at several sizes.

    python experiments/pretraining/resolution.py                 # 128, 224, 288 px; ~5 min on 2 cores

ELPV cells are 300 x 300 px and adapt-small sees 128 px, so thin cracks may be lost in the
resize. This measures the same architecture (ViT width 128, 4 layers, patch 16; positional
embeddings sized for each input) randomly initialised with one fixed seed, frozen, with a
16-shot linear probe (C chosen on 16 validation shots per class, as ``adapt``'s linear method
does). Scored on the **dev split of the ELPV train pool** used by the recipe search
(recipe_search.md: 25% of the 1,968 train cells, stratified, seed 123); the test split is not read.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from adapt.core.backbone import register_builtin_configs
from adapt.core.classifier import PixelNormalizer
from adapt.data import few_shot_split, load_dataset
from adapt.data.images import stratified_split
from adapt.core.features import load_pixels

register_builtin_configs()  # adapt-small, used with plain open_clip below

C_GRID = np.logspace(-2, 4, 13)


def features(model, images, size: int) -> np.ndarray:
    norm = PixelNormalizer(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    px = load_pixels(images, size, progress=False)
    with torch.no_grad():
        out = [F.normalize(model.encode_image(norm(px[i : i + 64])), dim=-1) for i in range(0, len(px), 64)]
    return torch.cat(out).numpy()


def probe(ftr, ytr, fval, yval, fdev, ydev) -> float:
    best = max(C_GRID, key=lambda c: balanced_accuracy_score(
        yval, LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(ftr, ytr).predict(fval)))
    clf = LogisticRegression(C=best, max_iter=5000, class_weight="balanced").fit(ftr, ytr)
    return balanced_accuracy_score(ydev, clf.predict(fdev))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="128,224,288")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--shots", type=int, default=16)
    args = p.parse_args()
    pool = load_dataset("elpv").train
    rest, dev = stratified_split(pool.labels, 0.25, seed=123)
    rest, dev = pool.subset(rest), pool.subset(dev)
    print(f"dev split: {len(dev)} cells of the train pool; probe pool: {len(rest)}")
    print("| input px | tokens | dev balanced accuracy (%), mean ± std over seeds | s |\n|---|---:|---|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        t0 = time.time()
        torch.manual_seed(0)
        model = open_clip.create_model("adapt-small", pretrained=None, force_image_size=size).eval()
        fdev = features(model, dev, size)
        scores = []
        for seed in (int(s) for s in args.seeds.split(",")):
            split = few_shot_split(rest, args.shots, seed)
            scores.append(probe(features(model, split.train, size), split.train.labels,
                                features(model, split.val, size), split.val.labels, fdev, dev.labels))
        print(f"| {size} | {(size // 16) ** 2} | {100 * np.mean(scores):.1f} ± {100 * np.std(scores):.1f} | {time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
