"""Other heads on the same frozen features as the product's probe: a dev-split study (issue 21).

    OPENBLAS_NUM_THREADS=1 python experiments/fewshot/probe_variants.py --data elpv --shots 4 16 --seeds 1-10 --out DIR
    OPENBLAS_NUM_THREADS=1 python experiments/fewshot/probe_variants.py --data /tmp/drawn_dev100 --shots 16 --seeds 1-10 --out DIR
    python experiments/fewshot/linear_recipe.py --report DIR/probe_variants.jsonl

Same data, draws and features as ``linear_recipe.py`` (its ``load_study``: dev data only, the 8
dihedral views of every image, stage maps avg- and max-pooled) and the product's recipe as the
baseline (``default``: logistic regression on every training view, C by repeated stratified 4-fold
over all 2K images, refit on all, the head on the mean feature of the 8 views). The variants change
one thing each:

- ``std``: features standardised (sklearn ``StandardScaler``, fitted on the training rows) before the probe;
- ``sqrt``: signed square root of every feature, then L2 per row (power normalisation);
- ``lda``: linear discriminant analysis with Ledoit-Wolf shrinkage (no C to choose);
- ``lr+ncm``: the probe's probabilities averaged with a nearest-class-mean softmax on cosine similarity
  (temperature chosen by the same cross-validation);
- ``balanced``: ``class_weight="balanced"`` (the few-shot split is balanced; this checks nothing hides there).

One JSON line per (data, shots, seed) in ``DIR/probe_variants.jsonl`` (``product`` = the default,
so ``--report`` prints gains over it).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).parent))
from linear_recipe import C_GRID, load_study, score  # noqa: E402

TEMPERATURES = (0.01, 0.02, 0.05, 0.1)


def signed_sqrt(x: np.ndarray) -> np.ndarray:
    y = np.sign(x) * np.sqrt(np.abs(x))
    return y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)


class NearestMean:
    """Softmax over cosine similarity to each class's mean training feature."""

    def __init__(self, temperature: float) -> None:
        self.t = temperature

    def fit(self, x, y):
        m = np.stack([x[y == k].mean(axis=0) for k in np.unique(y)])
        self.means = m / np.linalg.norm(m, axis=1, keepdims=True)
        return self

    def predict_proba(self, x):
        z = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ self.means.T / self.t
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


class Averaged:
    def __init__(self, *models) -> None:
        self.models = models

    def fit(self, x, y):
        for m in self.models:
            m.fit(x, y)
        return self

    def predict_proba(self, x):
        return np.mean([m.predict_proba(x) for m in self.models], axis=0)


def logreg(c: float, seed: int, **kw):
    return LogisticRegression(C=c, max_iter=2000, random_state=seed, **kw)


VARIANTS = {  # name -> (feature transform, {grid value: model factory(seed)})
    "product": (None, {c: (lambda s, c=c: logreg(c, s)) for c in C_GRID}),
    "std": (None, {c: (lambda s, c=c: make_pipeline(StandardScaler(), logreg(c, s))) for c in C_GRID / 100}),
    "sqrt": (signed_sqrt, {c: (lambda s, c=c: logreg(c, s)) for c in C_GRID}),
    "lda": (None, {0: (lambda s: LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"))}),
    "lr+ncm": (None, {(c, t): (lambda s, c=c, t=t: Averaged(logreg(c, s), NearestMean(t))) for c in C_GRID[::2] for t in TEMPERATURES}),
    "balanced": (None, {c: (lambda s, c=c: logreg(c, s, class_weight="balanced")) for c in C_GRID}),
}


def rows_of(f, idx, y):
    return f[idx].reshape(-1, f.shape[2]), np.repeat(y, f.shape[1])


def mean_view(f, idx):
    return f[idx].mean(axis=1)


def fit_quiet(model, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


def run_variant(name, feats, labels, pool, dev_idx, seed, folds=4, repeats=2) -> tuple[float, object]:
    transform, grid = VARIANTS[name]
    f = transform(feats) if transform else feats
    y = labels[pool]
    keys = list(grid)
    if len(keys) > 1:
        k = int(min(folds, np.bincount(y).min()))
        scores = np.zeros((len(keys), 2))
        for tr, te in RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed).split(pool, y):
            x, yy = rows_of(f, pool[tr], y[tr])
            for j, key in enumerate(keys):
                scores[j] += score(fit_quiet(grid[key](seed), x, yy).predict_proba(mean_view(f, pool[te])), y[te])
        best = keys[max(range(len(keys)), key=lambda j: tuple(scores[j]))]
    else:
        best = keys[0]
    x, yy = rows_of(f, pool, y)
    probs = fit_quiet(grid[best](seed), x, yy).predict_proba(mean_view(f, dev_idx))
    return balanced_accuracy_score(labels[dev_idx], probs.argmax(1)), best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--shots", type=int, nargs="+", default=[16])
    ap.add_argument("--seeds", default="1-10")
    ap.add_argument("--dev", type=int, default=600)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    a, _, b = args.seeds.partition("-")
    seeds = list(range(int(a), int(b or a) + 1))
    out = Path(args.out)
    feats, labels, draws, dev_idx, tag = load_study(args.data, args.shots, seeds, out, dev=args.dev)
    f = feats["max"]  # the product's pooling (avg + max)
    for shots in args.shots:
        for seed in seeds:
            tr, va = draws[shots, seed]
            pool = np.concatenate([tr, va])
            rec = {"data": args.data + tag, "shots": shots, "seed": seed}
            for name in args.variants:
                rec[name], chosen = run_variant(name, f, labels, pool, dev_idx, seed)
                rec[f"C {name}"] = str(chosen)
            with (out / "probe_variants.jsonl").open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
