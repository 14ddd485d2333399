"""Where a user waits on ``adapt retrain --method linear``: the phases of one 16-shot retrain (issue 23).

    python experiments/cost/bench_retrain.py                    # product default backbone, 3 fresh processes per case
    python experiments/cost/bench_retrain.py --repeats 1 --out /tmp/x

Runs ``adapt.pipelines.retrain.run_retrain`` (ELPV binary, linear, 16 shots, seed 1) in fresh
processes, through ``bench_cost.measure`` (same phases: load, features, fit, export, evaluate),
in two cases:

- ``cold``: an empty ``ADAPT_CACHE_DIR``: no frozen features and no cached encoder graph (the
  first retrain on a machine, or after a backbone change);
- ``new data``: the encoder graph cached by an earlier retrain, the feature cache emptied (what
  a user meets every time they retrain on new images).
- ``next seed``: right after ``new data``, the same data with ``--seed 2`` (what a user meets
  when trying another seed, shot count or method: the test images' features are cached, the
  new few-shot images' are not).

Writes ``retrain.md`` and ``retrain.json`` beside this file (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

from bench_cost import PHASES, check_backbone_available, warm_page_cache  # this folder is sys.path[0]
from machine import CpuWatch, machine_facts, quietness_warnings

CASES = ("cold", "new data", "next seed")


def run_case(cache: Path, env_extra: dict[str, str], seed: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        spec = {"name": "linear", "hparams": env_extra.get("hparams", {}), "backbone": env_extra["backbone"],
                "pretrained": env_extra["pretrained"], "seed": seed}
        env = {**os.environ, **env_extra["env"], "ADAPT_CACHE_DIR": str(cache)}
        cmd = [sys.executable, str(HERE / "bench_cost.py"), "--worker", json.dumps(spec), "--worker-out", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"retrain failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="adapt-effnet-lite0")
    p.add_argument("--pretrained", default="default")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE", help="linear hyper-parameters, as adapt retrain --hp")
    p.add_argument("--label", default="", help="what this run measures (e.g. 'before', 'after'), recorded in the outputs")
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args(argv)
    extra = {"backbone": args.backbone, "pretrained": args.pretrained, "env": check_backbone_available(args.backbone, args.pretrained),
             "hparams": dict(kv.split("=", 1) for kv in args.hp)}
    warm_page_cache()
    watch = CpuWatch().start()
    runs: dict[str, list[dict]] = {c: [] for c in CASES}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-retrain-cache-") as cache:
            runs["cold"].append(run_case(Path(cache), extra))
            shutil.rmtree(Path(cache) / "features", ignore_errors=True)
            runs["new data"].append(run_case(Path(cache), extra))
            runs["next seed"].append(run_case(Path(cache), extra, seed=2))
    report = {
        "label": args.label,
        "machine": machine_facts(HERE.parents[1]),
        "watch": watch.stop(),
        "summary": {c: {k: statistics.median(r[k] for r in rs) for k in (*PHASES, "total_s", "balanced_accuracy")} for c, rs in runs.items()},
        "runs": runs,
    }
    report["warnings"] = quietness_warnings(report["watch"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrain.json").write_text(json.dumps(report, indent=2, default=str))
    w = report["watch"]
    lines = [f"# 16-shot linear retrain by phase ({args.backbone} @ {args.pretrained}, ELPV, seed 1; next seed: 2; hp {extra['hparams'] or 'defaults'}){' - ' + args.label if args.label else ''}", ""]
    lines += [f"> {w}" for w in report["warnings"]] + ([""] if report["warnings"] else [])
    lines += ["| case | load | features | fit | export | evaluate | total | test bal. acc. |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c, s in report["summary"].items():
        lines.append(f"| {c} | " + " | ".join(f"{s[k]:.2f}" for k in (*PHASES, "total_s")) + f" | {s['balanced_accuracy']:.3f} |")
    lines += ["", f"Medians over {args.repeats} fresh process(es); seconds; total excludes Python imports.",
              f"Load average (1 min) {w['load_start']:.2f} at start, {w['load_end']:.2f} at end; "
              f"other processes used {w['other_cores']:.2f} cores on average over {w['wall_s']:.0f} s.",
              f"Machine: {report['machine']['nproc']} cores; git {report['machine']['git_commit']}."]
    (out / "retrain.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
