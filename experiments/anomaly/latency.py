"""ONNX Runtime latency of exported anomaly models: one image per call, 1 thread, median after warm-up.

Under load from other jobs the medians are noisy; run all models to compare in one call, interleaved.

    python experiments/anomaly/latency.py /tmp/anomaly-runs/*/model.onnx
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from adapt.contract.modelmeta import INPUT_NAME
from adapt.core.export import ort_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    sessions = {m: ort_session(m, threads=1) for m in args.models}
    size = sessions[args.models[0]].get_inputs()[0].shape[1]
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    times: dict[str, list[float]] = {m: [] for m in args.models}
    for r in range(args.repeats + 3):
        for m, s in sessions.items():  # interleaved: load from other jobs hits every model alike
            t = time.perf_counter()
            s.run(None, {INPUT_NAME: image})
            if r >= 3:
                times[m].append(time.perf_counter() - t)
    for m in args.models:
        row = {"model": m, "onnx_mb": round(Path(m).stat().st_size / 2**20, 2), "latency_ms_p50": round(1000 * float(np.median(times[m])), 1),
               "latency_ms_min": round(1000 * min(times[m]), 1), "repeats": args.repeats, "date": time.strftime("%Y-%m-%d %H:%M"),
               "machine": f"{platform.machine()} 2-core VM shared with other jobs, ORT 1 thread"}
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
