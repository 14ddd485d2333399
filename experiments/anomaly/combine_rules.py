"""Rules that combine the patch score and the image score, compared on saved raw scores (no refitting).

``texture_wide.py --raw DIR`` saves, per (data, split, seed), the raw patch score and image score of the
validation images (16 good + 16 of each defect class from the train pool) and of the evaluation images.
Each rule here sees only the validation scores to set itself up (the standardisation on good validation
images, as the product does, and whatever it chooses), then scores the evaluation images:

- ``local``, ``image``: one score alone; ``max`` (the product default before this), ``sum``;
- ``max-m<m>``: ``max(z_patch, z_image - m)`` (the image term counts only ``m`` good-image stds beyond);
- ``pick[<rules>]``: per fit, the rule of ``<rules>`` with the best validation ROC-AUC (ties: the first);
  ``max`` where validation holds no defect; ``pick-d<d>[...]``: another rule only where it beats ``max``
  by more than ``d``;
- ``logreg-C<c>``: a logistic regression on the two validation z-scores (balanced classes, L2 with
  ``C``), its decision function as the score (weights kept >= 0);
- ``pick-ratio``: ``max(z_patch, r z_image)``, ``r`` from a small grid chosen by validation ROC-AUC.

    python experiments/anomaly/combine_rules.py /tmp/raw --split dev             # the dev table (choosing)
    python experiments/anomaly/combine_rules.py /tmp/raw --split test --report max pick[local,image,max]   # old vs new
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from adapt.methods.patchcore import choose_threshold, standardise

FIXED = ("local", "image", "max", "sum", "max-m0.5", "max-m1", "max-m2", "max-m3")
RATIOS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def fixed(rule: str, zl: np.ndarray, zg: np.ndarray) -> np.ndarray:
    if rule == "local":
        return zl
    if rule == "image":
        return zg
    if rule == "sum":
        return zl + zg
    if rule.startswith("max-m"):
        return np.maximum(zl, zg - float(rule[5:]))
    if rule.startswith("ratio"):
        return np.maximum(zl, float(rule[5:]) * zg)
    assert rule == "max", rule
    return np.maximum(zl, zg)


def auc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")


def apply(rule: str, r: dict) -> tuple[np.ndarray, np.ndarray, str]:
    """(validation scores, evaluation scores, what the rule chose) of ``rule`` on one saved fit."""
    dv = r["defective_val"]
    ml, sl = standardise(r["local_val"][~dv])
    mg, sg = standardise(r["image_val"][~dv])
    zv = ((r["local_val"] - ml) / sl, (r["image_val"] - mg) / sg)
    ze = ((r["local_eval"] - ml) / sl, (r["image_eval"] - mg) / sg)
    if rule.startswith("pick"):
        options = [f"ratio{x}" for x in RATIOS] if rule == "pick-ratio" else rule[rule.index("[") + 1 : -1].split(",")
        lead = float(rule[6 : rule.index("[")]) if rule.startswith("pick-d") else 0.0
        chosen = "max"
        if dv.any():
            aucs = [auc(dv, fixed(o, *zv)) + (lead if o == "max" else 0.0) for o in options]
            chosen = options[int(np.argmax(aucs))]
        return fixed(chosen, *zv), fixed(chosen, *ze), chosen
    if rule.startswith("logreg"):
        if not dv.any():
            return fixed("max", *zv), fixed("max", *ze), "max"
        x = np.stack(zv, axis=1)
        lr = LogisticRegression(C=float(rule[8:]), class_weight="balanced").fit(x, dv)
        w = np.clip(lr.coef_[0], 0, None)
        w = w / w.sum() if w.sum() > 0 else np.array([0.5, 0.5])
        return x @ w, np.stack(ze, axis=1) @ w, f"w={w[0]:.2f},{w[1]:.2f}"
    return fixed(rule, *zv), fixed(rule, *ze), rule


def evaluate(rule: str, r: dict) -> dict:
    sv, se, chosen = apply(rule, r)
    kinds, good = r["kinds"], str(r["good"])
    y = (kinds != good).astype(int)
    t = choose_threshold(sv, r["defective_val"], 0.95)
    flagged = se >= t
    kind_auc = {k: auc(y[(kinds == good) | (kinds == k)], se[(kinds == good) | (kinds == k)]) for k in sorted(set(kinds) - {good})}
    return {"auc": auc(y, se), "bacc": float(((~flagged[y == 0]).mean() + flagged[y == 1].mean()) / 2), "chosen": chosen, "kind_auc": kind_auc}


def load(raw: Path, split: str) -> dict[str, list[dict]]:
    by_data = defaultdict(list)
    for f in sorted(raw.glob(f"*_{split}_seed*.npz")):
        z = np.load(f, allow_pickle=False)
        r = {k: z[k] for k in z.files}
        by_data[str(r["data"])].append(r)
    return dict(by_data)


def report(by_data: dict[str, list[dict]], old: str, new: str) -> str:
    """Old vs new rule per dataset: ROC-AUC and balanced accuracy (mean ± std over seeds), what ``new`` chose, ROC-AUC per kind."""
    def ms(v) -> str:
        return f"{np.mean(v):.3f} ± {np.std(v):.3f}"

    lines = [f"| data | seeds | ROC-AUC {old} | ROC-AUC {new} | bal. acc {old} | bal. acc {new} | {new} chose | ROC-AUC per kind, {old} -> {new} |",
             "|---|---|---|---|---|---|---|---|"]
    for d, fits in by_data.items():
        a, b = [evaluate(old, r) for r in fits], [evaluate(new, r) for r in fits]
        picks = [row["chosen"] for row in b]
        kinds = ", ".join(f"{k} {np.mean([r['kind_auc'][k] for r in a]):.2f} -> {np.mean([r['kind_auc'][k] for r in b]):.2f}" for k in a[0]["kind_auc"])
        lines.append(f"| {d} | {len(fits)} | {ms([r['auc'] for r in a])} | **{ms([r['auc'] for r in b])}** | {ms([r['bacc'] for r in a])} | "
                     f"{ms([r['bacc'] for r in b])} | {', '.join(f'{c} {picks.count(c)}' for c in sorted(set(picks)))} | {kinds} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", type=Path)
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument("--rules", nargs="+", default=[*FIXED, "pick[local,image,max]", "pick[local,max]", "pick[local,image,max,sum]",
                                                     "pick-d0.02[local,image,max]", "pick-d0.05[local,image,max]",
                                                     "pick-ratio", "logreg-C0.01", "logreg-C0.1", "logreg-C1"])
    ap.add_argument("--key", default="auc", choices=("auc", "bacc"))
    ap.add_argument("--out", type=Path, help="append one JSON row per (data, seed, rule)")
    ap.add_argument("--report", nargs=2, metavar=("OLD", "NEW"), help="print old vs new per dataset and exit")
    args = ap.parse_args()
    by_data = load(args.raw, args.split)
    if args.report:
        print(report(by_data, *args.report))
        return
    datas = list(by_data)
    print(f"| rule | {' | '.join(f'{d} ({len(by_data[d])})' for d in datas)} | mean | worst |")
    print("|---|" + "---|" * (len(datas) + 2))
    for rule in args.rules:
        cells, means = [], []
        for d in datas:
            rows = [evaluate(rule, r) for r in by_data[d]]
            v = np.array([row[args.key] for row in rows])
            means.append(v.mean())
            picks = [row["chosen"] for row in rows]
            counts = f" [{', '.join(f'{c} {picks.count(c)}' for c in sorted(set(picks)))}]" if rule.startswith("pick") else ""
            cells.append(f"{v.mean():.3f} ± {v.std():.3f}{counts}")
            if args.out:
                with open(args.out, "a") as fh:
                    for r, row in zip(by_data[d], rows):
                        fh.write(json.dumps({"data": d, "split": args.split, "seed": int(r["seed"]), "rule": rule, **row}) + "\n")
        print(f"| {rule} | {' | '.join(cells)} | {np.mean(means):.3f} | {np.min(means):.3f} |")


if __name__ == "__main__":
    main()
