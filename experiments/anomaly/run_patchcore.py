"""Anomaly mode measured through the product pipeline (``adapt.pipelines.retrain.run_retrain``, ONNX evaluated).

Each run is what ``adapt retrain --method patchcore --good-label ... --shots K`` does; the supervised
methods run on the same data at the same K (K labelled images *per class*: twice the labels on a
binary task). Rows are appended to a JSON lines file; ``--table`` prints the markdown table.

    python experiments/anomaly/run_patchcore.py --data /tmp/drawn --good ok --shots 16 --out results.jsonl
    python experiments/anomaly/run_patchcore.py --data elpv --good functional --shots 16 64 --methods patchcore linear
    python experiments/anomaly/run_patchcore.py --table results.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch


def all_good_shots(data: str, good: str, val_shots: int) -> int:
    """K for "all good training images": the good train pool less the validation images."""
    from adapt.data import load_dataset

    pool = load_dataset(data).train
    return int((pool.labels == pool.classes.index(good)).sum()) - val_shots


def run_one(data: str, good: str, method: str, shots: int, seed: int, out_root: Path, hparams: dict) -> dict:
    from adapt.pipelines.retrain import RetrainConfig, run_retrain

    val_shots = None
    if shots == 0:  # all good training images (patchcore only), 16 kept for validation
        shots, val_shots = all_good_shots(data, good, 16), 16
    name = f"{Path(data).name or data}-{method}-{shots}shot-seed{seed}-{time.strftime('%H%M%S')}".replace(":", "-")
    cfg = RetrainConfig(
        data=data, method=method, shots=shots, val_shots=val_shots, seed=seed, output_dir=out_root / name, progress=False,
        good_label=good if method == "patchcore" else "", hparams=hparams if method == "patchcore" else {},
    )
    t = time.time()
    result = run_retrain(cfg)
    m = result.metrics
    row = {
        "data": data, "method": method, "shots": shots, "seed": seed, "n_test": m["n"],
        "roc_auc": m.get("roc_auc"), "balanced_accuracy": m["balanced_accuracy"], "accuracy": m["accuracy"],
        "adapt_s": round(result.timings["adapt_s"], 1), "wall_s": round(time.time() - t, 1),
        "onnx_mb": round(result.model_path.stat().st_size / 2**20, 1),
    }
    if "anomaly" in m:
        row.update(defect_recall=m["anomaly"]["defect_recall"], good_recall=m["anomaly"]["good_recall"],
                   bank_size=result.params.get("chosen.bank_size"), threshold_rule=result.params.get("chosen.threshold_rule"),
                   score=result.params.get("chosen.score"))
    else:
        row["per_class_recall"] = {c: v["recall"] for c, v in m["per_class"].items()}
    return row


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = ["| data | method | K | test n | ROC-AUC | bal. acc | recall per class | bank | ONNX MB | adapt s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        recall = r.get("defect_recall") or r.get("per_class_recall") or {}
        if "good_recall" in r:
            recall = {"good": r["good_recall"], **recall}
        rec = ", ".join(f"{k} {v:.2f}" for k, v in recall.items())
        auc = f"{r['roc_auc']:.3f}" if r.get("roc_auc") is not None else "-"
        lines.append(f"| {r['data']} | {r['method']} | {r['shots']} | {r['n_test']} | {auc} | {r['balanced_accuracy']:.3f} | {rec} | "
                     f"{r.get('bank_size') or '-'} | {r['onnx_mb']} | {r['adapt_s']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data")
    ap.add_argument("--good", default="")
    ap.add_argument("--shots", type=int, nargs="+", default=[16], help="K; 0 = every good training image (patchcore)")
    ap.add_argument("--methods", nargs="+", default=["patchcore"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE", help="patchcore hyper-parameters")
    ap.add_argument("--out", default="experiments/anomaly/results.jsonl")
    ap.add_argument("--runs-dir", default="/tmp/anomaly-runs")
    ap.add_argument("--table", metavar="JSONL", help="print the markdown table of a results file and exit")
    args = ap.parse_args()
    if args.table:
        print(table(Path(args.table)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    hparams = dict(kv.split("=", 1) for kv in args.hp)
    for shots in args.shots:
        for method in args.methods:
            for seed in args.seeds:
                row = run_one(args.data, args.good, method, shots, seed, Path(args.runs_dir), hparams)
                row.update(hp=hparams, date=time.strftime("%Y-%m-%d %H:%M"), machine=f"{platform.machine()}, torch threads 1")
                print(json.dumps(row), flush=True)
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
