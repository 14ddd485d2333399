"""Mean ± std tables of the JSON-lines runs written by ``semisup_study.py`` (and ``ladder.py``)."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def table(rows: list[dict], key: str = "balanced_accuracy") -> str:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["features"], r["split"], r["task"], r["method"], r["shots"])].append(100 * r[key])
    shots = sorted({r["shots"] for r in rows})
    lines = ["| features | split | task | method | " + " | ".join(f"{s}-shot" for s in shots) + " | seeds |",
             "|---|---|---|---|" + "---|" * len(shots) + "---|"]
    seen = []
    for f, sp, t, m, _ in groups:
        if (f, sp, t, m) not in seen:
            seen.append((f, sp, t, m))
    for f, sp, t, m in seen:
        cells, n = [], 0
        for s in shots:
            v = groups.get((f, sp, t, m, s), [])
            n = max(n, len(v))
            cells.append(f"{np.mean(v):.1f} ± {np.std(v):.1f}" if v else "–")
        lines.append(f"| {f} | {sp} | {t} | {m} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


RUNGS = (  # (features file stem, study method) -> ladder step
    ("imagenet", "base", "default backbone (linear probe)"),
    ("ssl-run1", "base", "+ in-domain SSL (linear probe)"),
    ("imagenet", "auto", "+ semi-supervised retrain (--unlabeled elpv)"),
    ("ssl-run1", "auto", "both"),
)


def ladder(rows: list[dict]) -> str:
    """The issue's ladder: one row per step, binary and 4-class at each shot count, test split only."""
    rows = [r for r in rows if r["split"] == "test"]
    shots = sorted({r["shots"] for r in rows})
    cols = [(t, s) for t in ("binary", "4class") for s in shots]
    lines = ["| step | " + " | ".join(f"{t} {s}-shot" for t, s in cols) + " | fit s (binary 16-shot, mean) |",
             "|---|" + "---|" * len(cols) + "---|"]
    for feats, method, name in RUNGS:
        cells = []
        for t, s in cols:
            v = [100 * r["balanced_accuracy"] for r in rows if (r["features"], r["method"], r["task"], r["shots"]) == (feats, method, t, s)]
            cells.append(f"{np.mean(v):.1f} ± {np.std(v):.1f}" + ("" if len(v) == 10 else f" ({len(v)} seeds)") if v else "–")
        fit = [r["fit_s"] for r in rows if (r["features"], r["method"], r["task"], r["shots"]) == (feats, method, "binary", max(shots))]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(fit):.1f} |" if fit else f"| {name} | " + " | ".join(cells) + " | – |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", type=Path, nargs="+")
    args = p.parse_args()
    rows = [json.loads(line) for path in args.runs for line in path.read_text().splitlines() if line.strip()]
    print(table(rows))
    if any(r["split"] == "test" for r in rows):
        print()
        print(ladder(rows))


if __name__ == "__main__":
    main()
