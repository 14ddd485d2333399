"""Tower adaptation (LoRA on the CNN) against the linear probe, on dev folders only (issue 21, item 1).

    PYTHONPATH=<scikit-image> python experiments/backbone/drawn_defects.py --out /tmp/dev/d100 --seed 100
    PYTHONPATH=<scikit-image> python experiments/backbone/drawn_defects.py --out /tmp/dev/t101 --seed 101 --kinds ok orientation scale contrast blur
    OMP_NUM_THREADS=1 python experiments/fewshot/lora_recipe.py --data /tmp/dev/d100 /tmp/dev/t101 --seeds 1-3 \
        --variant linear=linear --variant lora=lora --variant lora-insp=lora:inspection_augment=true

Every run is ``adapt.pipelines.retrain.run_retrain`` as ``adapt retrain --method M --hp ...`` runs it
(default backbone, scored through the exported ONNX model on the folder's test/). The folders are
drawn-defect folders with generator seeds >= 100, which nothing is reported on: their test/ is a dev
split. A variant is ``NAME=METHOD[:KEY=VALUE,KEY=VALUE...]``. One JSON line per (data, seed,
variant) is appended to ``--out`` (a sweep resumes where it stopped); the table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def variant(text: str) -> tuple[str, str, dict[str, str]]:
    name, _, spec = text.partition("=")
    method, _, hps = spec.partition(":")
    return name, method, dict(kv.split("=", 1) for kv in hps.split(",") if kv)


def run_one(data: str, seed: int, method: str, hparams: dict[str, str], shots: int) -> dict:
    from adapt.pipelines.retrain import RetrainConfig, run_retrain

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = run_retrain(RetrainConfig(data=data, method=method, shots=shots, seed=seed, output_dir=Path(out),
                                           progress=False, hparams=hparams))
    m = result.metrics
    p = result.params
    return {"balanced_accuracy": m["balanced_accuracy"], "accuracy": m["accuracy"], "wall_s": round(time.perf_counter() - t, 1),
            "fit_s": round(result.timings.get("fit_s", 0.0), 1), "best_epoch": p.get("chosen.best_epoch"), "epochs_run": p.get("chosen.epochs_run")}


def report(rows: list[dict]) -> str:
    by: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        by.setdefault((r["data"], r["variant"]), []).append(100 * r["balanced_accuracy"])
    lines = ["| data | variant | seeds | balanced acc. (%) |", "|---|---|---|---|"]
    for (data, name), v in sorted(by.items()):
        lines.append(f"| {Path(data).name} | {name} | {len(v)} | {np.mean(v):.1f} ± {np.std(v):.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True, help="dev folders (train/ and test/)")
    ap.add_argument("--seeds", default="1-3")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--variant", action="append", required=True, help="NAME=METHOD[:KEY=VALUE,...]")
    ap.add_argument("--out", default=str(HERE / "lora_recipe" / "runs.jsonl"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    have = {(r["data"], r["seed"], r["variant"]) for r in rows}
    for data in args.data:
        for seed in seeds(args.seeds):
            for name, method, hps in map(variant, args.variant):
                if (data, seed, name) in have:
                    continue
                row = {"data": data, "seed": seed, "variant": name, "method": method, "hparams": hps, "shots": args.shots,
                       **run_one(data, seed, method, hps, args.shots), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
                print(json.dumps(row), flush=True)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                rows.append(row)
    print(report([r for r in rows if r["data"] in args.data]))


if __name__ == "__main__":
    main()
