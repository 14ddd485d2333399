"""Serving benchmark: the gRPC service against its in-process limit and against `mlflow models serve`.

    python experiments/serving/bench_serving.py [--model PATH] [--quick]

One run, one exported model file, one ONNX Runtime thread budget (``--threads``, default: one
per physical core, which is also what ORT picks by itself inside ``mlflow models serve``), the
same images (the 656 real ELPV test cells, sent as the PNG files they are):

(a) the limit, in this process (``limit.py``), with the server's session options and each of
    three ORT spin-waiting settings: (a1) ORT alone on pre-decoded pixels at the best batch
    size; (a2) decode + resize + ORT, as the server does per request, with a decode thread pool
    feeding batched ORT (best configuration of a small sweep). Also the latency of one image at
    a time (decode + ORT), the reference for the single-client latency target.
(b) ``adapt serve`` as a subprocess (default batching; ``--workers`` raised so every stream gets
    a handler), driven by ``loadgen.py`` in another process: unary ``Classify`` and
    ``ClassifyStream`` (one stream per client, one image in flight), closed loop at each
    concurrency. Batch sizes come from the server's Prometheus histogram (per batch) and from
    the responses' ``batch_size`` (as seen by a request).
(c) ``mlflow models serve -w 1 --env-manager local`` on the same ONNX file wrapped by
    ``adapt.tracking.pyfunc`` (what ``adapt retrain`` logs), one image per request at the same
    concurrencies, plus requests of 8 images (what an MLflow user might do to batch).

Targets (issue 7): (b)/(a2) >= 0.9 at saturation (best concurrency), (b)/(c) >= 3 at
saturation, and p99 of one unary client <= 1.3 x the p50 of one image in-process. Every
rate also gets its CPU time per image (server process tree, or this process for (a)), which
other load on the machine disturbs far less than images/s.

Writes results.md, results.json and throughput.png (to experiments/serving/, or with
``--quick`` to experiments/serving/.cache/quick/ so quick runs never overwrite committed
results) and logs everything to MLflow (experiment "benchmarks"). Records the load average
and the machine's busy CPU before and after; warns when the machine was not quiet.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import limit  # noqa: E402
import loadgen  # noqa: E402
import report  # noqa: E402

logger = logging.getLogger("bench_serving")

MODEL_COMMAND = (
    "retrain --data elpv --method linear --shots 16 --seed 1 --backbone adapt-effnet-lite0 --pretrained imagenet --no-tracking"
)
# the made model is cached under a name of the command that made it, so a changed command never reuses a stale model
CACHED_MODEL = HERE / ".cache" / f"model-{hashlib.sha256(MODEL_COMMAND.encode()).hexdigest()[:8]}" / "model.onnx"
QUIET_LOAD = 1.0  # 1-minute load average (half of 2 cores; it lags a minute behind) above which the machine is not quiet
BUSY_PERCENT = 10.0  # CPU busy (over 2 s, all cores) above which it is not quiet
OTHER_CORES = 0.1  # cores used by other processes during a measurement above which it was not quiet


@dataclass(frozen=True)
class Plan:
    """What one run measures and for how long."""

    concurrency: tuple[int, ...]
    duration_s: float  # measured window per point
    warmup_s: float  # load before the window opens
    raw_seconds: float  # per configuration of the in-process sweeps
    raw_batches: tuple[int, ...]  # (a1) batch sizes
    pipeline_batches: tuple[int, ...]  # (a2) batch sizes
    decode_threads: tuple[int, ...]  # (a2) decode pool sizes
    single_count: int  # images for the one-at-a-time latency
    mlflow_batched: tuple[int, ...]  # concurrencies for 8-image MLflow requests


FULL = Plan((1, 4, 16, 64), 10.0, 3.0, 3.0, (1, 2, 4, 8, 16, 32), (8, 16, 32), (1, 2), 300, (1, 4, 16))
QUICK = Plan((1, 16, 64), 3.0, 2.0, 1.5, (1, 8, 32), (8, 32), (1, 2), 60, (4,))
MLFLOW_BATCH = 8


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    plan = QUICK if args.quick else FULL
    if args.duration:
        plan = Plan(**{**asdict(plan), "duration_s": args.duration})
    threads = args.threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1
    out_dir = Path(args.out) if args.out else (HERE / ".cache" / "quick" if args.quick else HERE)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = ensure_model(args.model)
    images = elpv_test_images()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        tmp = Path(tmp)
        image_list = tmp / "images.json"
        image_list.write_text(json.dumps([str(p) for p in images]))
        facts = machine_facts(args, plan, threads, model_path, len(images))
        facts["not_quiet"] = warn_if_busy(facts["before"])

        logger.info("(a) in-process limit, %d ORT threads", threads)
        raw = measure_limit(model_path, images, threads, plan)

        logger.info("(b) gRPC service")
        with grpc_server(model_path, threads, max(plan.concurrency), tmp) as (pid, address, metrics_url):
            points = [
                run_point(target, address, c, plan, image_list, pid, metrics_url)
                for target in ("grpc-unary", "grpc-stream")
                for c in plan.concurrency
            ]

        logger.info("(c) mlflow models serve")
        with mlflow_server(model_path, tmp) as (pid, url):
            points += [run_point("mlflow", url, c, plan, image_list, pid) for c in plan.concurrency]
            points += [
                run_point("mlflow", url, c, plan, image_list, pid, per_request=MLFLOW_BATCH)
                for c in plan.mlflow_batched
            ]

        facts["after"] = load_snapshot()
        record_quietness(facts, raw, points)

    results = {"facts": facts, "limit": raw, "points": points, "ratios": report.ratios(raw, points)}
    paths = report.publish(results, out_dir, args.tracking_uri, log=not args.no_tracking)
    print(report.summary(results, paths))
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=f"exported model.onnx (default: made once with `adapt {MODEL_COMMAND}`)")
    p.add_argument("--quick", action="store_true", help="fewer points, shorter windows (~2-3 min)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads for (a) and (b) (default: physical cores, as ORT picks in (c))",
    )
    p.add_argument("--duration", type=float, help="seconds measured per point (default: 10, quick: 3)")
    p.add_argument("--out", help="folder for results.md/json and throughput.png")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    return p.parse_args()


# ---------------------------------------------------------------------------- inputs


def ensure_model(path: str | None) -> Path:
    if path:
        return Path(path).resolve()
    if not CACHED_MODEL.is_file():
        logger.info("no --model: making one with `adapt %s` (about a minute)", MODEL_COMMAND)
        command = [
            sys.executable,
            "-m",
            "adapt",
            "-q",
            *shlex.split(MODEL_COMMAND),
            "--output-dir",
            str(CACHED_MODEL.parent),
        ]
        subprocess.run(command, check=True, cwd=REPO)
    return CACHED_MODEL


def elpv_test_images() -> list[Path]:
    from adapt.data import load_dataset

    test = load_dataset("elpv").test
    return [Path(test.root) / key for key in test.keys]


def load_snapshot() -> dict:
    """Load average and how busy the CPUs are right now (over 2 s), before/after our own work."""
    return {"loadavg": list(os.getloadavg()), "cpu_busy_percent": psutil.cpu_percent(interval=2.0)}


def settled_snapshot(max_wait_s: float = 180.0) -> dict:
    """``load_snapshot()`` once the 1-minute load average is below ``QUIET_LOAD``, waiting up to
    ``max_wait_s``: it lags about a minute behind work that has just ended (a previous benchmark)."""
    deadline = time.monotonic() + max_wait_s
    snapshot = load_snapshot()
    while snapshot["loadavg"][0] > QUIET_LOAD and time.monotonic() < deadline:
        logger.info("waiting for the machine to settle: load average %.2f > %.1f", snapshot["loadavg"][0], QUIET_LOAD)
        time.sleep(8.0)
        snapshot = load_snapshot()
    return snapshot


def warn_if_busy(snapshot: dict, when: str = "before") -> str:
    """A warning (also returned) when the machine was not quiet; '' when it was.

    After the run the load average still contains the benchmark's own load (it decays over
    minutes), so only the CPUs' busy time, measured with our servers stopped, counts then.
    """
    loaded = when == "before" and snapshot["loadavg"][0] > QUIET_LOAD
    if not loaded and snapshot["cpu_busy_percent"] <= BUSY_PERCENT:
        return ""
    busy = f"{when} the run: load average {snapshot['loadavg'][0]:.2f}, CPUs {snapshot['cpu_busy_percent']:.0f}% busy"
    logger.warning("machine not quiet %s: numbers are not final", busy)
    return busy


def record_quietness(facts: dict, raw: dict, points: list[dict]) -> None:
    """Gather every sign that the machine was not quiet into ``facts["not_quiet"]`` ('' = quiet)."""
    signs = [facts["not_quiet"], warn_if_busy(facts["after"], when="after")]
    facts["max_other_cpu_cores"] = max(p["other_cpu_cores"] for p in points)
    other = max(raw["other_cpu_cores"], facts["max_other_cpu_cores"])
    if other > OTHER_CORES:
        signs.append(f"other processes used up to {other:.2f} cores during the measurements")
        logger.warning("other processes used up to %.2f cores during the measurements: numbers are not final", other)
    facts["not_quiet"] = "; ".join(filter(None, signs))


def machine_facts(args: argparse.Namespace, plan: Plan, threads: int, model: Path, n_images: int) -> dict:
    import grpc
    import mlflow
    import onnxruntime
    import PIL

    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "python experiments/serving/bench_serving.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "mode": "quick" if args.quick else "full",
        "git_commit": git.stdout.strip() + ("+dirty" if dirty.stdout.strip() else ""),
        "host": socket.gethostname(),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "versions": {
            "onnxruntime": onnxruntime.__version__,
            "grpcio": grpc.__version__,
            "mlflow": mlflow.__version__,
            "pillow": PIL.__version__,
        },
        "ort_threads": threads,
        "model": str(model),
        "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest()[:16],
        "model_mb": round(model.stat().st_size / 2**20, 1),
        "model_made_by": f"adapt {MODEL_COMMAND}" if model == CACHED_MODEL else "given with --model",
        "images": f"{n_images} ELPV test cells (300x300 grayscale PNG, as stored)",
        "plan": asdict(plan),
        "before": settled_snapshot(),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


# ---------------------------------------------------------------------------- (a)


def measure_limit(model_path: Path, images: list[Path], threads: int, plan: Plan) -> dict:
    models = {name: limit.load(model_path, threads, name) for name in limit.SPINNING}
    data = [p.read_bytes() for p in images]
    busy0, own0, start = loadgen.machine_busy(), time.process_time(), time.perf_counter()
    single = limit.single_image(models, data, plan.single_count)
    logger.info(
        "  one image: p50 %.1f ms (ORT alone %.1f ms; %s)",
        single["p50_ms"],
        single["ort_p50_ms"],
        single["best_config"],
    )
    a1 = limit.ort_only(models, data, list(plan.raw_batches), plan.raw_seconds)
    logger.info("  (a1) ORT only: %.1f images/s (%s)", a1["images_per_s"], a1["best_config"])
    a2 = limit.pipeline(models, data, list(plan.pipeline_batches), list(plan.decode_threads), plan.raw_seconds)
    logger.info("  (a2) decode + ORT: %.1f images/s (%s)", a2["images_per_s"], a2["best_config"])
    other = (loadgen.machine_busy() - busy0 - (time.process_time() - own0)) / (time.perf_counter() - start)
    server = limit.server_spinning(model_path, threads)
    return {
        "single_image": single,
        "a1_ort_only": a1,
        "a2_decode_ort": a2,
        "server_spinning": server,
        "other_cpu_cores": max(0.0, other),
    }


# ---------------------------------------------------------------------------- (b), (c)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def grpc_server(model: Path, threads: int, max_concurrency: int, tmp: Path, extra: tuple[str, ...] = ()):
    """``adapt serve`` (plus ``extra`` options) in its own process: yields (pid, address, metrics URL)."""
    port, metrics_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "adapt", "-q", "serve", "--model", str(model), "--host", "127.0.0.1",
        "--port", str(port), "--metrics-port", str(metrics_port), "--intra-op-threads", str(threads),
        "--workers", str(max(32, 2 * max_concurrency)), "--reload-interval", "0", "--data-dir", str(tmp / "feedback"), *extra,
    ]  # fmt: skip
    with _process(command, tmp / "grpc-server.log") as proc:
        address = f"127.0.0.1:{port}"
        _wait_until(lambda: _grpc_serving(address), proc, "adapt serve", tmp / "grpc-server.log")
        yield proc.pid, address, f"http://127.0.0.1:{metrics_port}/metrics"


@contextlib.contextmanager
def mlflow_server(model: Path, tmp: Path):
    """``mlflow models serve`` on the pyfunc that ``adapt retrain`` logs: yields (pid, /invocations URL)."""
    model_dir = tmp / "mlflow-model"
    save_mlflow_model(model, model_dir)
    port = free_port()
    bin_dir = Path(sys.executable).parent  # mlflow starts `uvicorn` from PATH
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [
        str(bin_dir / "mlflow"),
        "models",
        "serve",
        "-m",
        str(model_dir),
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    with _process(command, tmp / "mlflow-server.log", env) as proc:
        base = f"http://127.0.0.1:{port}"
        _wait_until(lambda: _http_ok(f"{base}/ping"), proc, "mlflow models serve", tmp / "mlflow-server.log")
        yield proc.pid, f"{base}/invocations"


def save_mlflow_model(onnx_path: Path, dest: Path) -> None:
    """The same pyfunc model ``adapt.tracking.runs.log_classifier_model`` logs, saved locally."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow.pyfunc
    import onnxruntime as ort

    import adapt.tracking.pyfunc as code
    from adapt.contract.modelmeta import read_session

    meta = read_session(ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]))
    mlflow.pyfunc.save_model(
        str(dest),
        python_model=code.__file__,
        artifacts={code.ONNX_ARTIFACT: str(onnx_path)},
        signature=code.signature_for(meta.labels),
        input_example=code.input_example(meta.image_size),
    )


@contextlib.contextmanager
def _process(command: list[str], log: Path, env: dict | None = None):
    """Run ``command`` in a new session (process group) and kill the whole group at the end."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # uvicorn workers outliving their parent
            os.killpg(proc.pid, signal.SIGKILL)


def _wait_until(ready, proc: subprocess.Popen, what: str, log: Path, timeout: float = 180.0) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _grpc_serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def run_point(
    target: str,
    address: str,
    concurrency: int,
    plan: Plan,
    image_list: Path,
    server_pid: int,
    metrics_url: str | None = None,
    per_request: int = 1,
) -> dict:
    command = [
        sys.executable, str(HERE / "loadgen.py"), "--target", target, "--address", address, "--images", str(image_list),
        "--concurrency", str(concurrency), "--duration", str(plan.duration_s), "--warmup", str(plan.warmup_s),
        "--server-pid", str(server_pid), "--images-per-request", str(per_request),
    ]  # fmt: skip
    if metrics_url:
        command += ["--metrics-url", metrics_url]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, timeout=plan.warmup_s + plan.duration_s + 180
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    point = json.loads(done.stdout.strip().splitlines()[-1])
    logger.info(
        "  %-11s x%-2d c=%-3d %7.1f images/s  p50 %6.1f ms  p99 %6.1f ms  batch %4.1f  errors %d",
        target, per_request, concurrency, point["images_per_s"], point["p50_ms"], point["p99_ms"],
        point["batch_size_mean"] if metrics_url else point["batch_size_request_mean"], point["errors"],
    )  # fmt: skip
    return point


if __name__ == "__main__":
    sys.exit(main())
