"""Is the default backbone worth its 15 minutes? Pretrained vs the same architecture at random init.

    python experiments/pretraining/bench_backbone.py              # uses (or builds) the cached default backbone
    python experiments/pretraining/bench_backbone.py --rebuild    # pretrains the default preset again, timed

Measures, for the ``default`` pretraining preset (``adapt pretrain --preset default``):
- pretraining wall time on this machine and its zero-shot accuracy on held-out synthetic defects
  (9 classes: good + 8 defect kinds; a generator stream never used for training);
- ELPV binary, 16 shots per class (+16 validation), seeds 1/2/3: linear probe and LoRA with the
  pretrained weights vs the same architecture randomly initialised, plus zero-shot and
  Tip-Adapter for the pretrained one; mean ± std of balanced accuracy and accuracy on the fixed
  held-out test split (656 cells), which nothing was tuned on.
Writes ``results.md`` and ``results.json`` here and logs them to MLflow (experiment ``benchmarks``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "fewshot"))

logger = logging.getLogger("bench_backbone")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="adapt-small")
    p.add_argument("--rebuild", action="store_true", help="pretrain the default preset again (into a temporary folder) and time it")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--methods", default="linear,lora,tip-adapter,zeroshot")
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--no-tracking", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from bench_fewshot import Backbone, Task, run_one

    from adapt.pipelines.default_backbone import load_backbone
    from adapt.pipelines.default_backbone import default_checkpoint

    load_start = os.getloadavg()[0]
    pretrain_info = {}
    if args.rebuild:
        import tempfile

        from adapt.pipelines.pretrain import build_default_backbone

        work = Path(tempfile.mkdtemp(prefix="default-backbone-"))
        t0 = time.perf_counter()
        weights = build_default_backbone(args.arch, work)
        pretrain_info["pretrain_wall_s"] = time.perf_counter() - t0
    else:
        weights = default_checkpoint(args.arch)
    metrics_file = weights.parent / "pretrain_metrics.json"
    if metrics_file.is_file():
        pretrain_info.update(json.loads(metrics_file.read_text()))
    logger.info("default backbone: %s", weights)

    task = Task("binary")
    specs = {"pretrained": Backbone("pretrained", args.arch, str(weights)), "random-init": Backbone("random-init", args.arch, "none")}
    backbones = {}
    for name, spec in specs.items():
        torch.manual_seed(0)
        backbones[name] = load_backbone(spec.arch, spec.pretrained)
    rows = []
    for method in args.methods.split(","):
        for name in ("pretrained", "random-init"):
            if name == "random-init" and method not in ("linear", "lora"):
                continue
            for seed in (int(s) for s in args.seeds.split(",")):
                row = run_one(task, backbones[name], specs[name], method, 16, seed)
                rows.append(row)
                logger.info("%s %s seed %d: bal.acc %.3f acc %.3f", name, method, seed, row["balanced_accuracy"], row["accuracy"])

    summary = {}
    for r in rows:
        summary.setdefault((r["backbone"], r["method"]), []).append(r)
    table = ["| backbone | method | balanced accuracy (%) | accuracy (%) | fit s |", "|---|---|---|---|---|"]
    results = {"pretrain": pretrain_info, "runs": rows, "summary": {}}
    for (bb, method), rs in summary.items():
        bal = np.array([r["balanced_accuracy"] for r in rs])
        acc = np.array([r["accuracy"] for r in rs])
        secs = np.mean([r["fit_seconds"] for r in rs])
        table.append(f"| {bb} | {method} | {100 * bal.mean():.1f} ± {100 * bal.std():.1f} | {100 * acc.mean():.1f} ± {100 * acc.std():.1f} | {secs:.0f} |")
        results["summary"][f"{bb}/{method}"] = {"balanced_accuracy": bal.mean(), "balanced_accuracy_std": bal.std(), "accuracy": acc.mean()}
    zs = pretrain_info.get("zero_shot", {})
    load_end = os.getloadavg()[0]
    lines = [
        "# Default backbone: pretrained vs random init",
        "",
        f"Produced by `python experiments/pretraining/bench_backbone.py{' --rebuild' if args.rebuild else ''}` on {time.strftime('%Y-%m-%d')} "
        f"({len(os.sched_getaffinity(0))} CPU cores; load average {load_start:.1f} at start, {load_end:.1f} at end).",
        f"Backbone: `{args.arch}`, weights from the `default` pretraining preset (`adapt pretrain --preset default`): `{weights}`.",
        "",
        "## Pretraining",
        "",
        f"- steps: {pretrain_info.get('steps', '?')}, training time: {pretrain_info.get('train_seconds', float('nan')):.0f} s"
        + (f", whole build (incl. start-up and the zero-shot check): {pretrain_info['pretrain_wall_s']:.0f} s" if "pretrain_wall_s" in pretrain_info else ""),
        f"- zero-shot on held-out synthetic defects ({zs.get('classes', '?')} classes, {zs.get('images', '?')} images): "
        f"**{100 * zs.get('accuracy', float('nan')):.1f}%** (chance {100 * zs.get('chance', float('nan')):.1f}%); "
        f"good vs defective (2 prompts, balanced accuracy) {100 * zs.get('good_vs_defect_balanced_accuracy', float('nan')):.1f}% (chance 50%)",
        "",
        "## ELPV binary, 16 shots per class (+16 validation), seeds " + args.seeds,
        "",
        *table,
        "",
        "Mean ± std over seeds on the fixed held-out test split (656 cells; 31% defective, so always answering",
        "\"functional\" scores 68.8% accuracy and 50% balanced accuracy).",
    ]
    out = Path(args.out)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    logger.info("wrote %s", out / "results.md")
    if not args.no_tracking:
        from adapt.tracking.runs import start_run
        from adapt.tracking.store import resolve_tracking_uri

        run = start_run(resolve_tracking_uri(args.tracking_uri), "benchmarks", "default-backbone", params=vars(args) | {"weights": str(weights)}, command="benchmark")
        run.log_metrics({k.replace("/", ".") + ".balanced_accuracy": v["balanced_accuracy"] for k, v in results["summary"].items()})
        run.log_artifact(out / "results.md")
        run.log_artifact(out / "results.json")
        run.end()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
