"""anomalib's PatchCore as a peer: the same few-shot split, the same backbone weights and stage.

anomalib is not a dependency of adapt. Install it beside, never into the project's venv, e.g.

    pip download --no-deps anomalib && pip install --no-deps --target /tmp/anomalib_pkgs anomalib-*.whl \
        jsonargparse docstring-parser einops freia kornia kornia_rs omegaconf antlr4-python3-runtime==4.9.3 \
        rich-argparse opencv-python-headless imagecodecs lazy_loader tifffile scikit-image imageio networkx
    PYTHONPATH=/tmp/anomalib_pkgs:. python experiments/anomaly/anomalib_peer.py --data /tmp/drawn --good ok --shots 16

Its ``PatchcoreModel`` gets a timm ``tf_efficientnet_lite0`` feature extractor loaded with the default
backbone's image-tower weights, the layer ``blocks.2`` (= adapt's stage 2, stride 8), its own 3x3
neighbourhood pooling, k-center-greedy coreset and re-weighted image score; no flips/turns. The
held-out ROC-AUC is computed on the same test split as ``run_patchcore.py``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from adapt.pipelines.default_backbone import load_backbone
from adapt.core.classifier import PixelNormalizer
from adapt.data import load_dataset
from adapt.data.anomaly import anomaly_split
from adapt.core.features import load_pixels


def main() -> None:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--good", required=True)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--bank", type=int, default=8192, help="coreset size (as a ratio of the good patches)")
    ap.add_argument("--out", default="experiments/anomaly/anomalib_peer.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(1)
    b = load_backbone()
    split = anomaly_split(load_dataset(args.data), args.good, args.shots, seed=1)
    model = PatchcoreModel(layers=["blocks.2"], backbone="tf_efficientnet_lite0", pre_trained=False)
    missing, _ = model.feature_extractor.feature_extractor.load_state_dict(b.model.visual.trunk.state_dict(), strict=False)
    if missing:
        raise SystemExit(f"weights do not fit anomalib's extractor: missing {missing[:5]}")
    norm = PixelNormalizer(b.mean, b.std)

    def images(s):
        return norm(load_pixels(s, b.image_size, b.resize_mode, progress=False))

    t = time.time()
    model.train()
    with torch.no_grad():
        model(images(split.split.train))
        n_patches = sum(e.shape[0] for e in model.embedding_store) if hasattr(model, "embedding_store") else None
        ratio = min(1.0, args.bank / (n_patches or args.bank))
        model.subsample_embedding(ratio)
    fit_s = time.time() - t
    model.eval()
    test = split.data.test
    scores = []
    with torch.no_grad():
        for i in range(0, len(test), 16):
            batch = test.subset(range(i, min(i + 16, len(test))))
            scores.append(model(images(batch)).pred_score.reshape(-1))
    y = test.labels != 0
    row = {"data": args.data, "peer": "anomalib-2.7.0 PatchcoreModel", "shots": args.shots, "good_patches": n_patches,
           "bank": int(model.memory_bank.shape[0]), "fit_s": round(fit_s, 1),
           "roc_auc": round(float(roc_auc_score(y, torch.cat(scores).numpy())), 4), "n_test": len(test),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(row), flush=True)
    with open(args.out, "a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
