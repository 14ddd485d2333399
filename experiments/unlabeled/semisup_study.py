"""Which use of unlabeled images helps a few-shot linear probe on frozen features? (ELPV)

Reads the feature files of ``extract.py`` and compares, seeds x shots, on either

- ``--split dev``: a development split carved from the ELPV train pool (25%, stratified by defect
  level x module type, seed 1234). Few-shot draws and the unlabeled set come from the rest of the
  pool; the dev cells are never unlabeled data, so nothing transductive flatters the numbers.
  Every choice below was made on this split.
- ``--split test``: the product setting: the whole train pool is the few-shot pool and the
  unlabeled set; evaluated once on the fixed 656-cell test split.

Candidates (all end as one logistic-regression head on the features; C, thresholds and graph
sizes are chosen on the few-shot validation images, by balanced accuracy then log-loss):
``base`` (the shipped linear probe), ``center`` (unlabeled-mean centering), ``st`` (self-training
with confidence-thresholded, class-balanced pseudo-labels), ``ls`` (label spreading on a k-NN
graph, then LR on the spread labels), and their combinations with centering.

    python experiments/unlabeled/semisup_study.py --features experiments/unlabeled/cache/default.npz --split dev
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from candidates import Centering, Whitening, self_train

from adapt.data.images import stratified_split
from adapt.methods.frozen import selection_score
from adapt.methods.semisup import ClusterCentering, fit_logistic, fit_semisupervised, label_spread

C_GRID = np.logspace(-2, 4, 13).tolist()  # the shipped LinearConfig grid
C_GRID_SEMI = np.logspace(-2, 4, 7).tolist()
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)
NEIGHBORS = (5, 10, 20)
DEV_SEED, DEV_FRACTION = 1234, 0.25


def few_shot(labels: np.ndarray, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The draw of ``adapt.data.fewshot.few_shot_split`` (K train + K val per class) on index arrays."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(labels.max() + 1):
        order = rng.permutation(np.flatnonzero(labels == c))
        train += order[:shots].tolist()
        val += order[shots : 2 * shots].tolist()
    return np.sort(train), np.sort(val)


def choose(candidates, xv, yv):
    """The candidate model with the best validation score (first one wins ties)."""
    best = None
    for params, model, transform in candidates:
        score = selection_score(model.predict_proba(transform(xv)), yv)
        if best is None or score > best[0]:
            best = (score, params, model, transform)
    return best[1:]


def run_method(name: str, xl, yl, xv, yv, u, seed: int):
    if name == "auto":  # what `adapt retrain --method linear --unlabeled` ships (adapt.methods.semisup.fit_semisupervised)
        fitted = fit_semisupervised(xl, yl, xv, yv, u, c_grid=C_GRID, seed=seed)
        return fitted.params, fitted.model, fitted.transform
    parts = name.split("+")
    kind = parts[-1] if parts[-1] in ("base", "st", "ls") else "base"
    transform = make_transform(parts[:-1] if parts[-1] in ("base", "st", "ls") else parts, u)
    xl_t, u_t = transform(xl), transform(u)

    def cands():
        if kind == "base":
            for c in C_GRID:
                yield {"C": c}, fit_logistic(xl_t, yl, c, seed=seed), transform
        elif kind == "st":
            for c in C_GRID_SEMI:
                first = fit_logistic(xl_t, yl, c, seed=seed)
                yield {"C": c, "threshold": None}, first, transform
                for tau in THRESHOLDS:
                    model, used = self_train(xl_t, yl, u_t, c, tau, seed=seed, base=first)
                    yield {"C": c, "threshold": tau, "used": used}, model, transform
        elif kind == "ls":
            for k in NEIGHBORS:
                guessed, _ = label_spread(xl_t, yl, u_t, neighbors=k)
                xs, ys = np.concatenate([xl_t, u_t]), np.concatenate([yl, guessed])
                w = np.concatenate([np.ones(len(yl)), _balanced(guessed, yl)])
                for c in C_GRID_SEMI:
                    yield {"C": c, "neighbors": k}, fit_logistic(xs, ys, c, seed=seed, sample_weight=w), transform
        else:
            raise ValueError(name)

    return choose(cands(), xv, yv)


def make_transform(steps: list[str], u: np.ndarray):
    """Feature transforms fitted on the unlabeled set, applied in order (``center``, ``pca:D``, ``kc:K``)."""
    fitted = []
    for step in steps:
        head, _, arg = step.partition(":")
        current = fitted[-1](u) if fitted else u
        fitted.append(Centering.fit(current) if head == "center" else
                      Whitening.fit(current, int(arg)) if head == "pca" else ClusterCentering.fit(current, int(arg)))

    def apply(x):
        for f in fitted:
            x = f(x)
        return x

    return apply


def _balanced(guessed: np.ndarray, yl: np.ndarray) -> np.ndarray:
    w = np.zeros(len(guessed))
    for cls in np.unique(guessed):
        m = guessed == cls
        w[m] = max(1, int(np.sum(yl == cls))) / m.sum()
    return w


def balanced_accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return selection_score(probs, y)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--split", choices=("dev", "test"), default="dev")
    p.add_argument("--tasks", default="binary")
    p.add_argument("--shots", default="4,16")
    p.add_argument("--seeds", default="1,2,3,4,5,6,7,8,9,10")
    p.add_argument("--methods", default="base,center,st,center+st,ls,center+ls")
    p.add_argument("--out", type=Path, required=True, help="JSON lines, one per run")
    args = p.parse_args()

    f = np.load(args.features)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as log:
        for task in args.tasks.split(","):
            x, y = f["train"].astype(np.float64), f[f"train_{task}"]
            if args.split == "dev":
                strata = np.array([f"{a}-{b}" for a, b in zip(f["train_4class"], f["train_type"])])
                pool, held = stratified_split(strata, DEV_FRACTION, seed=DEV_SEED)
                xe, ye = x[held], y[held]
                x, y = x[pool], y[pool]
            else:
                xe, ye = f["test"].astype(np.float64), f[f"test_{task}"]
            for shots in map(int, args.shots.split(",")):
                for seed in map(int, args.seeds.split(",")):
                    tr, va = few_shot(y, shots, seed)
                    for method in args.methods.split(","):
                        t0 = time.perf_counter()
                        params, model, transform = run_method(method, x[tr], y[tr], x[va], y[va], x, seed)
                        bacc = balanced_accuracy(model.predict_proba(transform(xe)), ye)
                        row = {"features": args.features.stem, "split": args.split, "task": task, "shots": shots, "seed": seed,
                               "method": method, "balanced_accuracy": bacc, "fit_s": time.perf_counter() - t0, "params": params}
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                        print(f"{task} {shots}-shot seed {seed} {method:10s} {bacc:.3f} {params}", flush=True)


if __name__ == "__main__":
    main()
