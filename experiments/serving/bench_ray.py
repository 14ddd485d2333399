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
    p.add_argument("--out", default=str(HERE), help="folder for ray_results.json / .md")
    args = p.parse_args()
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
    points = {}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp = Path(tmp)
        image_list = tmp / "images.json"
        image_list.write_text(json.dumps([str(p) for p in elpv_test_images()]))
        logger.info("adapt serve (grpc engine), %d ONNX Runtime threads", cores)
        with bench_serving.grpc_server(model, cores, max(plan.concurrency), tmp) as (pid, address, metrics):
            points["grpc"] = [run_point("grpc-unary", address, c, plan, image_list, pid, metrics) for c in plan.concurrency]
        for replicas in (1, 2):
            logger.info("Ray Serve, %d replica(s)", replicas)
            started = time.perf_counter()
            with ray_server(model, replicas, cores, tmp) as (pid, address):
                facts[f"ray_{replicas}_start_s"] = round(time.perf_counter() - started, 1)
                points[f"ray-{replicas}"] = [run_point("grpc-unary", address, c, plan, image_list, pid) for c in plan.concurrency]
    facts["after"] = load_snapshot()
    results = {"facts": facts, "points": points, "ratios": ratios(points)}
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
    if 1 in base:
        own = base[1]["p50_ms"] - base[1]["server_p50_ms"]
        for name in ("ray-1", "ray-2"):
            single = next((p for p in points[name] if p["concurrency"] == 1), None)
            if single:
                out[f"{name} proxy overhead per request, ms (c=1)"] = single["p50_ms"] - single["server_p50_ms"] - own
    return out


def markdown(results: dict) -> str:
    f = results["facts"]
    lines = [
        "# adapt serve vs Ray Serve (same model, same run)",
        "",
        f"Command: `{f['command']}`  ",
        f"Date: {f['date']}; {f['cores']} cores; model `{Path(f['model']).name}` ({f['model']}); "
        f"network namespace with only loopback: {f['network_namespace']}  ",
        f"Load average before: {'/'.join(f'{x:.2f}' for x in f['before']['loadavg'])}, after: "
        f"{'/'.join(f'{x:.2f}' for x in f['after']['loadavg'])}. **The machine was shared with other jobs "
        "(other sessions' tests and trainings) during this run**: absolute numbers are low and noisy, one run each.  ",
        f"Ray start (local cluster + app): 1 replica {f.get('ray_1_start_s')} s, 2 replicas {f.get('ray_2_start_s')} s.",
        "",
        "| target | clients | images/s | p50 ms | p99 ms | server p50 ms | mean batch | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, points in results["points"].items():
        for p in points:
            lines.append(
                f"| {name} | {p['concurrency']} | {p['images_per_s']:.1f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} "
                f"| {p['server_p50_ms']:.1f} | {p['batch_size_request_mean']:.1f} | {p['errors']} |"
            )
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in results["ratios"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
