"""``adapt serve`` vs ``adapt serve --engine ray`` (1 and 2 replicas): same model, same images, one run.

    python experiments/serving/bench_ray.py [--model M.onnx] [--duration 10] [--concurrency 1 16]

Targets, each in its own process tree, measured one after the other by ``loadgen.py`` (closed-loop
unary ``Classify`` clients in a separate process, 3 s warm-up):

- ``grpc``: ``adapt serve`` (one process, ``services.batching``), ONNX Runtime threads = cores;
- ``ray-1``: ``adapt serve --engine ray --replicas 1`` (a local Ray started by the command; the
  replica reserves all cores and runs ONNX Runtime on all of them);
- ``ray-2``: ``--replicas 2`` (one core and one ONNX Runtime thread each).

The Ray proxy's per-request overhead is what one client (c=1) waits beyond the server's own
time: (client p50 - replica-reported p50) for Ray, minus the same for ``adapt serve``.
As root the whole run happens in a network namespace with only loopback (``unshare -n``):
Ray's gRPC proxy listens on ``[::]``. Writes ``ray_results.json`` and ``ray_results.md`` here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_serving  # noqa: E402
from bench_serving import _process, _wait_until, elpv_test_images, ensure_model, free_port, load_snapshot, run_point  # noqa: E402

logger = logging.getLogger("bench_ray")
REPO = HERE.parents[1]


@contextlib.contextmanager
def ray_server(model: Path, replicas: int, cores: int, tmp: Path):
    """``adapt serve --engine ray`` in its own session; yields (pid, address)."""
    port, http_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "adapt", "serve", "--engine", "ray", "--model", str(model), "--host", "127.0.0.1",
        "--port", str(port), "--http-port", str(http_port), "--replicas", str(replicas),
        "--replica-cpus", str(cores // replicas), "--intra-op-threads", str(cores // replicas),
        "--reload-interval", "0", "--data-dir", str(tmp / "feedback"),
    ]  # fmt: skip
    log = tmp / f"ray-{replicas}.log"
    env = {**os.environ, "HOME": str(tmp), "RAY_USAGE_STATS_ENABLED": "0"}  # Ray's cluster token goes to ~/.ray
    with _process(command, log, env=env) as proc:
        _wait_until(lambda: "serving engine=ray" in log.read_text(errors="replace"), proc, "adapt serve --engine ray", log, 300)
        yield proc.pid, f"127.0.0.1:{port}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="exported .onnx (default: the one bench_serving.py makes and caches)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--repeat", type=int, default=1, help="runs of the whole comparison (reported as mean ± std)")
    p.add_argument("--out", default=str(HERE), help="folder for ray_results.json / .md")
    p.add_argument("--render", action="store_true", help="only rewrite ray_results.md from ray_results.json")
    args = p.parse_args()
    if args.render:
        results = json.loads((Path(args.out) / "ray_results.json").read_text())
        for run in results["runs"]:
            run["ratios"] = ratios(run["points"])
        (Path(args.out) / "ray_results.md").write_text(markdown(results))
        return 0
    if os.geteuid() == 0 and shutil.which("unshare") and os.environ.get("ADAPT_BENCH_NETNS") != "1":
        script = 'ip link set lo up && exec "$0" "$@"'
        env = {**os.environ, "ADAPT_BENCH_NETNS": "1"}
        return subprocess.call(["unshare", "-n", "sh", "-c", script, sys.executable, *sys.argv], env=env)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    bench_serving.logger.setLevel(logging.INFO)
    plan = replace(bench_serving.QUICK, warmup_s=3.0, duration_s=args.duration, concurrency=tuple(args.concurrency))
    cores = psutil.cpu_count(logical=True) or 1
    model = ensure_model(args.model)
    facts = {
        "command": "python experiments/serving/bench_ray.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": cores,
        "model": str(model),
        "before": load_snapshot(),
        "network_namespace": os.environ.get("ADAPT_BENCH_NETNS") == "1",
    }
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp = Path(tmp)
        image_list = tmp / "images.json"
        image_list.write_text(json.dumps([str(p) for p in elpv_test_images()]))
        for run in range(args.repeat):  # the three targets in turn, so drifting background load hits all of them
            points = {}
            logger.info("run %d/%d: adapt serve (grpc engine), %d ONNX Runtime threads", run + 1, args.repeat, cores)
            with bench_serving.grpc_server(model, cores, max(plan.concurrency), tmp) as (pid, address, metrics):
                points["grpc"] = [run_point("grpc-unary", address, c, plan, image_list, pid, metrics) for c in plan.concurrency]
            for replicas in (1, 2):
                logger.info("run %d/%d: Ray Serve, %d replica(s)", run + 1, args.repeat, replicas)
                started = time.perf_counter()
                with ray_server(model, replicas, cores, tmp) as (pid, address):
                    facts.setdefault(f"ray_{replicas}_start_s", []).append(round(time.perf_counter() - started, 1))
                    points[f"ray-{replicas}"] = [run_point("grpc-unary", address, c, plan, image_list, pid) for c in plan.concurrency]
            runs.append({"points": points, "ratios": ratios(points)})
    facts["after"] = load_snapshot()
    results = {"facts": facts, "runs": runs}
    out = Path(args.out)
    (out / "ray_results.json").write_text(json.dumps(results, indent=1))
    (out / "ray_results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def ratios(points: dict) -> dict:
    base = {p["concurrency"]: p for p in points["grpc"]}
    out = {}
    for name in ("ray-1", "ray-2"):
        for p in points[name]:
            b = base[p["concurrency"]]
            c = p["concurrency"]
            out[f"{name} / grpc images/s, c={c}"] = p["images_per_s"] / b["images_per_s"]
            out[f"{name} / grpc p50, c={c}"] = p["p50_ms"] / b["p50_ms"]
            out[f"{name} / grpc p99, c={c}"] = p["p99_ms"] / b["p99_ms"]
            out[f"{name} / grpc CPU ms per image, c={c}"] = _cpu_ms(p) / _cpu_ms(b)
    if 1 in base:
        own = base[1]["p50_ms"] - base[1]["server_p50_ms"]
        for name in ("ray-1", "ray-2"):
            single = next((p for p in points[name] if p["concurrency"] == 1), None)
            if single:
                out[f"{name} proxy overhead per request, ms (c=1)"] = single["p50_ms"] - single["server_p50_ms"] - own
    return out


def _cpu_ms(point: dict) -> float:
    return point["server_cpu_cores"] * 1000.0 / point["images_per_s"]


def _ms(values: list[float]) -> str:
    mean, std = float(np.mean(values)), float(np.std(values))
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def markdown(results: dict) -> str:
    f, runs = results["facts"], results["runs"]
    lines = [
        "# adapt serve vs Ray Serve (same model, same run)",
        "",
        f"Command: `{f['command']}`  ",
        f"Date: {f['date']}; {f['cores']} cores; model `{f['model']}`; {len(runs)} run(s), each target once per run, "
        f"values as mean ± std over runs; network namespace with only loopback: {f['network_namespace']}  ",
        f"Load average before: {'/'.join(f'{x:.2f}' for x in f['before']['loadavg'])}, after: "
        f"{'/'.join(f'{x:.2f}' for x in f['after']['loadavg'])}. **The machine (2 cores) was shared with other jobs "
        "(other sessions' tests and trainings, load average far above 2) during this run**: absolute numbers are low and noisy.  ",
        f"Ray start (local cluster + app), s: 1 replica {f.get('ray_1_start_s')}, 2 replicas {f.get('ray_2_start_s')}.",
        "",
        "images/s depend on how much CPU the server got from the shared machine (`server cores`: its whole",
        "process tree, Ray's included); `CPU ms/image` (= server cores x 1000 / images/s) is the fairer comparison.",
        "",
        "| target | clients | images/s | p50 ms | p99 ms | server p50 ms | mean batch | server cores | CPU ms/image | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in runs[0]["points"]:
        for i, first in enumerate(runs[0]["points"][name]):
            col = [r["points"][name][i] for r in runs]
            keys = ("images_per_s", "p50_ms", "p99_ms", "server_p50_ms", "batch_size_request_mean", "server_cpu_cores")
            cells = [_ms([p[k] for p in col]) for k in keys] + [_ms([_cpu_ms(p) for p in col])]
            lines.append(f"| {name} | {first['concurrency']} | " + " | ".join(cells) + f" | {sum(p['errors'] for p in col)} |")
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {_ms([r['ratios'][k] for r in runs])} |" for k in runs[0]["ratios"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
