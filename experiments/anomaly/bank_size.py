"""PatchCore memory bank size vs ONNX file size, ONNX Runtime latency and held-out ROC-AUC.

One few-shot draw (``adapt.data.anomaly.anomaly_split``), the good patches extracted once, then for
each bank size: greedy coreset, export (parity checked), latency of one image on 1 ORT thread
(median of repeats, after warm-up), ROC-AUC of the exported model on the held-out split.

    python experiments/anomaly/bank_size.py --data elpv --good functional --shots 64 --sizes 1024 4096 16384
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from adapt.core.anomaly_head import PatchCoreHead
from adapt.pipelines.default_backbone import load_backbone
from adapt.core.classifier import ImageClassifier, PixelNormalizer
from adapt.data import load_dataset
from adapt.data.anomaly import DEFECTIVE, anomaly_split
from adapt.core.export import export_onnx, ort_session
from adapt.core.features import load_pixels
from adapt.methods.configs import PatchCoreConfig
from adapt.methods.base import AdaptContext, Method
from adapt.methods.patchcore import (
    choose_threshold,
    greedy_coreset,
    image_scores,
    patch_encoder,
    patch_features,
)
from adapt.contract.modelmeta import INPUT_NAME, OUTPUT_NAME


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--good", required=True)
    ap.add_argument("--shots", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--test-limit", type=int, default=0, help="score only the first N test images (0 = all)")
    ap.add_argument("--out", default="experiments/anomaly/bank_size.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(1)
    b = load_backbone()
    split = anomaly_split(load_dataset(args.data), args.good, args.shots, seed=1)
    cfg = PatchCoreConfig()
    ctx = AdaptContext(backbone=b, split=split.split, progress=False)
    encoder, norm = patch_encoder(ctx, cfg), PixelNormalizer(b.mean, b.std)

    def feats(images):
        return patch_features(encoder, norm, load_pixels(images, b.image_size, b.resize_mode, progress=False))

    t = time.time()
    good = feats(split.split.train)
    val = feats(split.split.val)
    test = split.data.test
    if args.test_limit:
        test = test.subset(np.random.default_rng(0).permutation(len(test))[: args.test_limit])
    test_pixels = load_pixels(test, b.image_size, b.resize_mode, progress=False)
    print(f"features {time.time() - t:.0f}s", flush=True)
    patches = good.flatten(0, 1)
    grid = round(good.shape[1] ** 0.5)
    for n in args.sizes:
        t = time.time()
        keep = greedy_coreset(patches, min(n, len(patches)))
        coreset_s = time.time() - t
        head = PatchCoreHead(patches[keep], 0.0, 1.0, grid, top_k=max(1, round(cfg.top_fraction * grid * grid)))
        s_val = image_scores(head, val)
        head.threshold = choose_threshold(s_val, split.split.val.labels != 0, cfg.good_quantile)
        head.scale = float(max(s_val[split.split.val.labels == 0].std(), 1e-6))
        info = ctx.info(Method.PATCHCORE, {"bank_size": len(keep)})
        info.labels, info.anomaly_threshold = [args.good, DEFECTIVE], head.threshold
        clf = ImageClassifier(encoder, head, info).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(clf, Path(tmp) / "m.onnx")
            size_mb = path.stat().st_size / 2**20
            session = ort_session(path, threads=1)
            one = test_pixels[:1].numpy()
            for _ in range(3):
                session.run([OUTPUT_NAME], {INPUT_NAME: one})
            times = []
            for _ in range(15):
                t0 = time.perf_counter()
                session.run([OUTPUT_NAME], {INPUT_NAME: one})
                times.append(time.perf_counter() - t0)
            probs = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: test_pixels[i : i + 2].numpy()})[0] for i in range(0, len(test_pixels), 2)])
        y = test.labels != 0
        row = {"data": args.data, "shots": args.shots, "good_patches": len(patches), "bank": len(keep), "coreset_s": round(coreset_s, 1),
               "onnx_mb": round(size_mb, 2), "latency_ms_p50": round(1000 * float(np.median(times)), 1),
               "roc_auc": round(float(roc_auc_score(y, probs[:, 1])), 4),
               "balanced_accuracy": round(float(((probs[~y, 1] < 0.5).mean() + (probs[y, 1] >= 0.5).mean()) / 2), 4),
               "n_test": len(test), "date": time.strftime("%Y-%m-%d %H:%M"), "ort_threads": 1}
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
