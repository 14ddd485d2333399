"""Where the gRPC server's time goes: py-spy samples of ``adapt serve`` under the benchmark's load.

    python experiments/serving/profile_server.py                     # one client, then 64 streams
    python experiments/serving/profile_server.py --serve-args="--ort-spin run"

Starts the server exactly as ``bench_serving.py`` does (same model, threads, options), drives it
with ``loadgen.py`` and records it with ``py-spy record --format raw`` (all threads, idle frames
left out; Python frames only, sampled without pausing the server, so the profiler costs little). Prints, per load point, the share of the samples in each part
of the serving path (ONNX Runtime, image decode, gRPC/protobuf, batching hand-off, other) and the
top leaf functions, and writes the collapsed stacks to ``--out`` for a flame graph
(``py-spy``'s raw format is what ``flamegraph.pl`` and speedscope read).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_serving as bench  # noqa: E402

# Parts of the serving path. A sample belongs to the part of its innermost matching frame, so a
# handler thread blocked on the batcher's future counts as waiting, not as gRPC.
PARTS = (
    ("onnxruntime", ("onnxruntime",)),
    ("image decode + resize", ("adapt/contract/imageio.py", "PIL/", "numpy/")),
    ("waiting (lock, condition, future)", ("threading.py", "concurrent/futures")),
    ("batcher", ("services/batching.py",)),
    ("gRPC + protobuf", ("grpc/", "grpc_", "google/protobuf")),
)


def part_of(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for name, needles in PARTS:
            if any(needle in frame for needle in needles):
                return name
    return "other Python (servicer, logging, metrics)"


def summarize(raw: Path, top: int = 12) -> dict:
    parts, leaves, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        parts[part_of(frames)] += n
        leaves[frames[-1]] += n
    share = lambda c: round(100.0 * c / max(total, 1), 1)  # noqa: E731
    return {
        "samples": total,
        "parts_percent": {k: share(v) for k, v in parts.most_common()},
        "top_leaves_percent": [(k, share(v)) for k, v in leaves.most_common(top)],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="exported model.onnx (default: the benchmark's)")
    p.add_argument("--concurrency", default="1,64", help="comma-separated load points (grpc-stream)")
    p.add_argument("--target", default="grpc-stream", choices=("grpc-unary", "grpc-stream"))
    p.add_argument("--duration", type=float, default=10.0, help="seconds recorded per point")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    p.add_argument("--serve-args", default="", help="extra `adapt serve` options, e.g. '--ort-spin run'")
    p.add_argument("--out", default=str(HERE / ".cache" / "profile"), help="folder for the raw stacks and summary.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = bench.ensure_model(args.model)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    plan = bench.Plan(concurrency=tuple(concurrency), duration_s=args.duration, warmup_s=2.0, raw_seconds=0,
                      raw_batches=(), pipeline_batches=(), decode_threads=(), single_count=0, mlflow_batched=())
    summary = {"serve_args": args.serve_args, "target": args.target, "points": {}}
    with tempfile.TemporaryDirectory(prefix="profile-serving-") as tmp:
        tmp = Path(tmp)
        image_list = tmp / "images.json"
        image_list.write_text(json.dumps([str(p) for p in bench.elpv_test_images()]))
        extra = tuple(shlex.split(args.serve_args))
        with bench.grpc_server(model, args.threads, max(concurrency), tmp, extra) as (pid, address, metrics_url):
            for c in concurrency:
                raw = out / f"{args.target}-c{c}.txt"
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--format", "raw",
                     "--nonblocking", "--rate", "100", "--duration", str(int(plan.warmup_s + plan.duration_s)),
                     "--output", str(raw)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
                point = bench.run_point(args.target, address, c, plan, image_list, pid, metrics_url)
                _, err = spy.communicate(timeout=120)
                if spy.returncode != 0 or not raw.is_file():
                    raise SystemExit(f"py-spy failed: {err.strip()[-500:]}")
                s = summarize(raw)
                s.update({k: point[k] for k in ("images_per_s", "p50_ms", "p99_ms")})
                summary["points"][f"c={c}"] = s
                print(f"\nc={c}: {point['images_per_s']:.1f} images/s, p50 {point['p50_ms']:.1f} ms, "
                      f"p99 {point['p99_ms']:.1f} ms; {s['samples']} samples")
                for name, pct in s["parts_percent"].items():
                    print(f"  {pct:5.1f}%  {name}")
                print("  top leaf frames:")
                for name, pct in s["top_leaves_percent"]:
                    print(f"  {pct:5.1f}%  {name[:110]}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
