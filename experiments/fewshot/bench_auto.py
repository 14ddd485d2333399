"""`adapt retrain` as a user runs it: ``--method auto`` (the default) against named methods, same harness.

    OMP_NUM_THREADS=1 python experiments/fewshot/bench_auto.py --data elpv --shots 16 --seeds 1,2,3 --methods linear,auto
    PYTHONPATH=$PWD:/path/to/scikit-image python experiments/backbone/drawn_defects.py --out /tmp/drawn
    OMP_NUM_THREADS=1 python experiments/fewshot/bench_auto.py --data /tmp/drawn --shots 16 --seeds 1 --methods linear,auto,lora

Each run is ``adapt.pipelines.retrain.run_retrain`` with the product's defaults (the default
backbone, the held-out test split evaluated through the exported ONNX model, nothing tuned on
it), no tracking. Rows are appended to ``auto_runs.csv`` at once (a sweep resumes where it
stopped); ``--report`` prints the mean ± std table. Wall time is what the user waits; CPU time is
the process's user+system time, which says more on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import resource
import socket
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CSV = HERE / "auto_runs.csv"
FIELDS = ["data", "shots", "seed", "method", "chosen", "balanced_accuracy", "accuracy", "needs_review_rate", "accuracy_on_accepted",
          "review_budget", "cv_summary", "wall_s", "cpu_s", "select_s", "date", "host", "threads"]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def done() -> set[tuple[str, int, int, str]]:
    if not CSV.is_file():
        return set()
    with CSV.open() as f:
        return {(r["data"], int(r["shots"]), int(r["seed"]), r["method"]) for r in csv.DictReader(f)}


def run_one(data: str, shots: int, seed: int, method: str, budget: float, review_budget: float) -> dict:
    from adapt.pipelines.retrain import RetrainConfig, run_retrain

    t, c = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory() as out:
        result = run_retrain(RetrainConfig(data=data, method=method, shots=shots, seed=seed, output_dir=Path(out), progress=False,
                                           budget_minutes=budget, review_budget=review_budget))
    m = result.metrics
    sel = m.get("selection") or {}
    cv = "; ".join(f"{k} {v['mean']:.3f}±{v['std']:.3f} ({v['folds']} folds)" if not v["skipped"] else f"{k}: {v['skipped']}"
                   for k, v in (sel.get("candidates") or {}).items())
    return {
        "data": data, "shots": shots, "seed": seed, "method": method, "chosen": m["method"],
        "balanced_accuracy": round(m["balanced_accuracy"], 4), "accuracy": round(m["accuracy"], 4),
        "needs_review_rate": round(m.get("needs_review_rate", 0.0), 4), "accuracy_on_accepted": round(m.get("accuracy_on_accepted", float("nan")), 4),
        "review_budget": review_budget, "cv_summary": cv, "wall_s": round(time.perf_counter() - t, 1), "cpu_s": round(cpu_seconds() - c, 1),
        "select_s": round(result.timings.get("select_s", 0.0), 1), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": f"{socket.gethostname()} ({os.cpu_count()} cores, shared)", "threads": os.environ.get("OMP_NUM_THREADS", ""),
    }


def report() -> str:
    import numpy as np

    with CSV.open() as f:
        rows = list(csv.DictReader(f))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["shots"], r["method"]), []).append(r)
    lines = ["| data | shots | method | seeds | balanced acc. (%) | review share (%) | acc. of auto-decided (%) | chosen | wall s | CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (data, shots, method), rs in sorted(groups.items()):
        def ms(key, scale=100.0):
            v = np.array([float(r[key]) for r in rs]) * scale
            return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}"
        chosen = ", ".join(sorted({r["chosen"] for r in rs}))
        lines.append(f"| {data} | {shots} | {method} | {','.join(r['seed'] for r in rs)} | {ms('balanced_accuracy')} | {ms('needs_review_rate')} | "
                     f"{ms('accuracy_on_accepted')} | {chosen} | {ms('wall_s', 1)} | {ms('cpu_s', 1)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="elpv")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--methods", default="linear,auto")
    ap.add_argument("--budget-minutes", type=float, default=3.0)
    ap.add_argument("--review-budget", type=float, default=0.25)
    ap.add_argument("--tag", default="", help="appended to the method's name in the CSV, e.g. @8min for a non-default budget")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.report:
        print(report())
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    finished = done()
    for seed in [int(s) for s in args.seeds.split(",")]:
        for method in args.methods.split(","):
            if (args.data, args.shots, seed, method + args.tag) in finished:
                continue
            row = run_one(args.data, args.shots, seed, method, args.budget_minutes, args.review_budget)
            row["method"] = method + args.tag
            new = not CSV.is_file()
            with CSV.open("a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=FIELDS)
                if new:
                    w.writeheader()
                w.writerow(row)
            print({k: row[k] for k in ("data", "seed", "method", "chosen", "balanced_accuracy", "needs_review_rate", "accuracy_on_accepted", "wall_s", "cpu_s")}, flush=True)


if __name__ == "__main__":
    main()
