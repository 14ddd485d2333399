"""Few-shot accuracy on ELPV: every method x shots x seeds, with baselines, in one harness.

    python experiments/fewshot/bench_fewshot.py --quick          # minutes: binary, 4 and 16 shots (*_quick.* files)
    python experiments/fewshot/bench_fewshot.py                  # the full sweep (hours on 2 cores)

Protocol (nothing here looks at the test split except to report):
- data: ELPV with its fixed held-out test split (656 cells; ``adapt.data.elpv``); binary
  (functional / defective) and 4-class (the four defect-probability levels);
- for each seed, K training images per class and K more for validation are drawn from the
  1,968-cell train pool (``few_shot_split``); hyper-parameters, early stopping and (for the
  product) the reject threshold are chosen on those validation images only. Labels used per
  class: 2K (K to fit, K to choose);
- methods with the product's default hyper-parameters; backbones: the default pretrained one
  and the same architecture randomly initialised; plus a small CNN trained from scratch on the
  same shots (``cnn.py``);
- transfer: adapt on one module type (mono or poly), test on the other's test cells;
- evaluation of frozen-feature methods applies the exported head to cached test features,
  which is what the exported ONNX graph computes (parity is tested in tests/test_methods.py);
  LoRA and the CNN run on the test pixels.

Every finished run is appended to ``runs.csv`` at once, so an interrupted sweep resumes where it
stopped. ``report.py`` turns the CSV into ``results.md`` and ``fewshot.png``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
FIELDS = ["task", "backbone", "method", "shots", "seed", "accuracy", "balanced_accuracy", "macro_f1", "fit_seconds"]
METHODS = ("zeroshot", "linear", "coop", "lora", "tip-adapter")
# earlier defaults, kept runnable in the same harness: name -> (method, --hp overrides)
VARIANTS = {
    "linear-v1": ("linear", {"select": "val", "train_views": "1", "tta_views": "1", "pooling": "avg"}),  # until 2026-12-07
    "linear-tta1": ("linear", {"tta_views": "1"}),  # today's recipe without test-time views (1 inference per image)
    "linear-tta8": ("linear", {"tta_views": "8"}),  # the default of 2026-12-07 (8 test-time views; 4 since 2026-12-08)
}
TASKS = {"binary": ("elpv", "elpv"), "4class": ("elpv:4class", "elpv:4class"), "mono->poly": ("elpv:mono", "elpv:poly"), "poly->mono": ("elpv:poly", "elpv:mono")}

logger = logging.getLogger("bench_fewshot")


@dataclass(frozen=True)
class Backbone:
    name: str  # how the results call it
    arch: str
    pretrained: str


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="binary task, shots 4 and 16, seeds 1-3, the default backbone plus baselines")
    p.add_argument("--tasks", default="binary,4class,mono->poly,poly->mono", help="comma-separated: " + ", ".join(TASKS) + ", or labelled folders")
    p.add_argument("--shots", default="1,2,4,8,16")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--methods", default=",".join(METHODS) + ",cnn")
    p.add_argument("--arch", default=None, help="backbone architecture (default: the product's, adapt.defaults.DEFAULT_ARCH)")
    p.add_argument("--pretrained", default="default", help="weights of the pretrained backbone (default: the product's)")
    p.add_argument("--no-random-baseline", action="store_true", help="skip the randomly initialised backbone")
    p.add_argument("--random-methods", default=None, help="methods run on the random-init baseline (default: all but zeroshot)")
    p.add_argument("--transfer-shots", default="16", help="shots for the mono<->poly transfer tasks")
    p.add_argument("--out", default=str(HERE), help="folder for runs.csv, results.md, fewshot.png")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--no-tracking", action="store_true")
    args = p.parse_args(argv)
    if args.arch is None:
        from adapt.defaults import DEFAULT_ARCH

        args.arch = DEFAULT_ARCH
    if args.quick:
        args.tasks, args.shots = "binary", "4,16"
    return args


def done_keys(path: Path) -> set[tuple]:
    if not path.is_file():
        return set()
    with open(path, newline="") as fh:
        return {(r["task"], r["backbone"], r["method"], int(r["shots"]), int(r["seed"])) for r in csv.DictReader(fh)}


def append_row(path: Path, row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())


class Task:
    """Train pool of one ELPV variant, held-out test split of another (the same one except for transfer)."""

    def __init__(self, name: str) -> None:
        from adapt.data import load_dataset

        train_spec, test_spec = TASKS.get(name, (name, name))  # any other name: a labelled folder (its train/ and test/)
        self.name = name
        self.train_data = load_dataset(train_spec)
        self.test = load_dataset(test_spec).test
        self.descriptions = self.train_data.descriptions
        self._pixels: dict[int, torch.Tensor] = {}

    def test_pixels(self, size: int) -> torch.Tensor:
        from adapt.core.features import load_pixels

        if size not in self._pixels:
            self._pixels[size] = load_pixels(self.test, size, progress=False)
        return self._pixels[size]


def evaluate(classifier, task: Task, backbone, method: str) -> np.ndarray:
    """Test probabilities: the head on cached frozen features, or the whole model on pixels."""
    from adapt.core.features import cached_features

    with torch.no_grad():
        if method in ("lora", "cnn"):  # (frozen-feature methods: the head on the features their encoder computes, views included)
            px = task.test_pixels(backbone.image_size)
            out = torch.cat([classifier(px[i : i + 128]) for i in range(0, len(px), 128)])
            return (torch.softmax(out, dim=-1) if method == "cnn" else out).numpy()  # the CNN returns logits
        feats = cached_features(backbone, task.test, classifier.encoder.spec, progress=False)
        return torch.softmax(classifier.head(feats), dim=-1).numpy()


def run_one(task: Task, bb, spec: Backbone, method: str, shots: int, seed: int) -> dict:
    from adapt.data import few_shot_split
    from adapt.core.evaluation import compute_metrics
    from adapt.methods import AdaptContext, fit, make_config
    from adapt.training.supervised import loop

    split = few_shot_split(task.train_data.train, shots, seed)
    t0 = time.perf_counter()
    if method == "cnn":
        from cnn import fit_cnn

        classifier = fit_cnn(split, bb.image_size, seed)
    else:
        ctx = AdaptContext(backbone=bb, split=split, descriptions=task.descriptions, progress=False, seed=seed,
                           train=loop(progress=False, seed=seed))
        name, overrides = VARIANTS.get(method, (method, {}))
        classifier = fit(name, ctx, make_config(name, overrides)).classifier
    seconds = time.perf_counter() - t0
    probs = evaluate(classifier, task, bb, method)
    m = compute_metrics(probs, task.test.labels, task.test.classes)
    return {
        "task": task.name, "backbone": spec.name, "method": method, "shots": shots, "seed": seed,
        "accuracy": round(m["accuracy"], 5), "balanced_accuracy": round(m["balanced_accuracy"], 5),
        "macro_f1": round(m["macro_f1"], 5), "fit_seconds": round(seconds, 2),
    }


def plan(args) -> list[tuple[str, Backbone, str, int, int]]:
    shots = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    default = Backbone("pretrained", args.arch, args.pretrained)
    random = Backbone("random-init", args.arch, "none")
    jobs = []
    for task in args.tasks.split(","):
        task_shots = [int(s) for s in args.transfer_shots.split(",")] if "->" in task else shots
        for k in task_shots:
            for seed in seeds:
                for method in methods:
                    if method == "cnn":
                        jobs.append((task, random, "cnn", k, seed))
                        continue
                    jobs.append((task, default, method, k, seed))
                    on_random = method != "zeroshot" if args.random_methods is None else method in args.random_methods.split(",")
                    if not args.no_random_baseline and on_random and "->" not in task:
                        jobs.append((task, random, method, k, seed))
    return jobs


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "adapt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import sys

    sys.path.insert(0, str(HERE))
    from adapt.pipelines.default_backbone import load_backbone

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    runs_csv = out / f"runs{suffix}.csv"
    finished = done_keys(runs_csv)
    jobs = [j for j in plan(args) if (j[0], j[1].name, j[2], j[3], j[4]) not in finished]
    logger.info("%d runs to do (%d already in %s)", len(jobs), len(finished), runs_csv)
    tasks: dict[str, Task] = {}
    backbones: dict[Backbone, object] = {}
    started = time.time()
    for i, (task_name, spec, method, shots, seed) in enumerate(jobs, 1):
        if task_name not in tasks:
            tasks[task_name] = Task(task_name)
        task = tasks[task_name]
        if spec not in backbones:
            torch.manual_seed(0)  # the random-init baseline is one fixed initialisation
            backbones[spec] = load_backbone(spec.arch, spec.pretrained)
        row = run_one(task, backbones[spec], spec, method, shots, seed)
        append_row(runs_csv, row)
        logger.info("[%d/%d] %s %s %s %d-shot seed %d: bal.acc %.3f acc %.3f (%.0fs)", i, len(jobs), task_name, spec.name,
                    method, shots, seed, row["balanced_accuracy"], row["accuracy"], row["fit_seconds"])
    from report import write_report

    md = write_report(runs_csv, out, command=" ".join(["python", "experiments/fewshot/bench_fewshot.py", *(argv or sys.argv[1:])]),
                      backbone=f"{args.arch} @ {args.pretrained}", suffix=suffix)
    logger.info("wrote %s (%.0f min)", md, (time.time() - started) / 60)
    if not args.no_tracking:
        log_to_mlflow(args, out, suffix)
    return 0


def log_to_mlflow(args, out: Path, suffix: str) -> None:
    from adapt.tracking.runs import start_run
    from adapt.tracking.store import resolve_tracking_uri
    from report import summary_metrics

    uri = resolve_tracking_uri(args.tracking_uri)
    run = start_run(uri, "benchmarks", "fewshot-elpv" + ("-quick" if args.quick else ""),
                    params={k: v for k, v in vars(args).items() if k not in ("tracking_uri",)}, command="benchmark")
    run.log_metrics(summary_metrics(out / f"runs{suffix}.csv"))
    for name in (f"runs{suffix}.csv", f"results{suffix}.md", f"fewshot{suffix}.png"):
        if (out / name).is_file():
            run.log_artifact(out / name)
    run.end()
    logger.info("MLflow: %s", run.url)


if __name__ == "__main__":
    raise SystemExit(main())
