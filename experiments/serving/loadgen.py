"""Closed-loop load generator for one benchmark point, run in its own process.

``bench_serving.py`` starts one of these per (target, concurrency) point, so the load
generator never shares a Python interpreter (or a GIL) with the server it measures. It opens
``--concurrency`` asyncio workers; each sends one image, waits for the answer, and sends the
next (closed loop, no think time). Targets:

- ``grpc-unary``: one ``Classify`` call per image (grpc.aio, one channel).
- ``grpc-stream``: one ``ClassifyStream`` call per worker, one image in flight on it.
- ``mlflow``: ``POST /invocations`` with ``--images-per-request`` base64 images (aiohttp).

Requests are built before the clock starts (protobuf messages, JSON bodies), so the client's
own work is the transport, not the encoding. After ``--warmup`` seconds a window of
``--duration`` seconds is measured: latencies of the requests that complete inside it, and
throughput from the clients' send-to-send cycles that lie inside it (see ``Window``). The server's
CPU time (its whole process tree, via psutil), the CPU time of everything else on the machine
(busy time of all cores minus server and client) and, for the gRPC server, its Prometheus
batch histogram are read at the window's edges. One JSON object is printed to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import math
import re
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


class Window:
    """Every request's send and completion times; the statistics use those inside [start, end).

    Throughput comes from the clients' cycles (send to next send on the same client) that lie
    wholly inside the window: images per cycle x clients / mean cycle. Unlike "completions /
    duration", it does not jump by a whole batch when a batch finishes just before or after
    the window's edge.
    """

    def __init__(self, start: float, duration: float, clients: int):
        self.start, self.end = start, start + duration
        self.sends: list[list[float]] = [[] for _ in range(clients)]
        self.latencies: list[float] = []
        self.batch_sizes: list[int] = []
        self.server_ms: list[float] = []
        self.errors = 0

    def sent(self, client: int) -> float:
        now = time.perf_counter()
        self.sends[client].append(now)
        return now

    def record(self, sent: float, batch_size: int = 0, server_ms: float = 0.0, images: int = 1) -> None:
        now = time.perf_counter()
        if self.start <= now < self.end:
            self.latencies.append(now - sent)
            self.batch_sizes.extend([batch_size] * images if batch_size else [])
            if server_ms:
                self.server_ms.append(server_ms)

    def error(self) -> None:
        if self.start <= time.perf_counter() < self.end:
            self.errors += 1

    @property
    def closed(self) -> bool:
        return time.perf_counter() >= self.end

    def cycles(self) -> list[tuple[float, float]]:
        """(start, length) of every client cycle wholly inside the window."""
        out = []
        for sends in self.sends:
            out += [(a, b - a) for a, b in itertools.pairwise(sends) if a >= self.start and b <= self.end]
        return out


def read_images(list_file: str) -> list[bytes]:
    return [Path(p).read_bytes() for p in json.loads(Path(list_file).read_text())]


# ---------------------------------------------------------------------------- targets


async def grpc_unary(address: str, images: list[bytes], concurrency: int, window: Window) -> None:
    import grpc

    from services.proto import inspection_pb2 as pb
    from services.proto import inspection_pb2_grpc as pb_grpc

    requests = [pb.ClassifyRequest(image=img) for img in images]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.InspectionServiceStub(channel)

        async def worker(k: int) -> None:
            i = k * len(requests) // concurrency
            while not window.closed:
                sent = window.sent(k)
                try:
                    resp = await stub.Classify(requests[i % len(requests)], timeout=60)
                    window.record(sent, resp.batch_size, resp.server_latency_ms)
                except grpc.aio.AioRpcError:
                    window.error()
                i += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))


async def grpc_stream(address: str, images: list[bytes], concurrency: int, window: Window) -> None:
    import grpc

    from services.proto import inspection_pb2 as pb
    from services.proto import inspection_pb2_grpc as pb_grpc

    requests = [pb.ClassifyRequest(image=img) for img in images]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.InspectionServiceStub(channel)

        async def worker(k: int) -> None:
            i = k * len(requests) // concurrency
            call = stub.ClassifyStream(timeout=3600)
            try:
                while not window.closed:
                    sent = window.sent(k)
                    await call.write(requests[i % len(requests)])
                    resp = await call.read()
                    if resp.HasField("error"):
                        window.error()
                    else:
                        window.record(sent, resp.batch_size, resp.server_latency_ms)
                    i += 1
                await call.done_writing()
            except grpc.aio.AioRpcError:
                window.error()
            finally:
                call.cancel()

        await asyncio.gather(*(worker(k) for k in range(concurrency)))


async def mlflow_http(url: str, images: list[bytes], concurrency: int, window: Window, per_request: int) -> None:
    import aiohttp

    encoded = [base64.b64encode(img).decode("ascii") for img in images]
    bodies = []
    for start in range(0, len(encoded) - per_request + 1, per_request):
        rows = [[b64] for b64 in encoded[start : start + per_request]]
        bodies.append(json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode())
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker(k: int) -> None:
            i = k * len(bodies) // concurrency
            while not window.closed:
                sent = window.sent(k)
                try:
                    async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as resp:
                        await resp.read()
                        if resp.status == 200:
                            window.record(sent, per_request, images=per_request)
                        else:
                            window.error()
                except aiohttp.ClientError:
                    window.error()
                i += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))


# ---------------------------------------------------------------------------- measurement


def process_tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    try:
        root = psutil.Process(pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            with_children = proc.cpu_times()
            total += with_children.user + with_children.system
        return total
    except psutil.Error:
        return math.nan


def machine_busy() -> float:
    """CPU seconds all cores have spent on anything but idling, since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def batch_histogram(metrics_url: str | None) -> tuple[float, float]:
    """(batches, images) so far from the server's ``adapt_batch_size`` histogram."""
    if not metrics_url:
        return math.nan, math.nan
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    return total("adapt_batch_size_count"), total("adapt_batch_size_sum")


async def measure(args: argparse.Namespace, images: list[bytes]) -> dict:
    start = time.perf_counter() + args.warmup
    window = Window(start, args.duration, args.concurrency)
    images_per_request = args.images_per_request if args.target == "mlflow" else 1

    async def edges() -> dict:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        cpu0, client0, busy0 = process_tree_cpu(args.server_pid), time.process_time(), machine_busy()
        batches0, imgs0 = await asyncio.to_thread(batch_histogram, args.metrics_url)
        await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
        cpu1, client1, busy1 = process_tree_cpu(args.server_pid), time.process_time(), machine_busy()
        batches1, imgs1 = await asyncio.to_thread(batch_histogram, args.metrics_url)
        server, client = cpu1 - cpu0, client1 - client0
        return {
            "server_cpu_cores": server / args.duration,
            "client_cpu_cores": client / args.duration,
            "other_cpu_cores": max(0.0, busy1 - busy0 - server - client) / args.duration,  # not ours: other load
            "batches": batches1 - batches0,
            "batched_images": imgs1 - imgs0,
        }

    if args.target == "grpc-unary":
        load = grpc_unary(args.address, images, args.concurrency, window)
    elif args.target == "grpc-stream":
        load = grpc_stream(args.address, images, args.concurrency, window)
    else:
        load = mlflow_http(args.address, images, args.concurrency, window, images_per_request)
    side, _ = await asyncio.gather(edges(), load)
    return summarise(args, window, side, images_per_request)


def summarise(args: argparse.Namespace, window: Window, side: dict, images_per_request: int) -> dict:
    lat_ms = np.asarray(window.latencies) * 1000.0
    n_req = len(lat_ms)
    ok = n_req / (n_req + window.errors) if n_req else 0.0
    cycles = np.asarray(window.cycles()).reshape(-1, 2)

    def rate(lengths: np.ndarray) -> float:
        return ok * images_per_request * args.concurrency * len(lengths) / lengths.sum() if len(lengths) else math.nan

    # spread: the same rate in five equal parts of the window (by cycle start)
    part = np.minimum(((cycles[:, 0] - window.start) / args.duration * 5).astype(int), 4)
    parts = [rate(cycles[part == i, 1]) for i in range(5)]
    batch = np.asarray(window.batch_sizes) if window.batch_sizes else np.zeros(1)
    out = {
        "target": args.target,
        "concurrency": args.concurrency,
        "images_per_request": images_per_request,
        "duration_s": args.duration,
        "requests": n_req,
        "errors": window.errors,
        "images_per_s": rate(cycles[:, 1]),
        "images_per_s_spread": float(np.nanstd(parts)) if not all(map(math.isnan, parts)) else math.nan,
        "images_per_s_completed": n_req * images_per_request / args.duration,  # plain count, for comparison
        "p50_ms": float(np.percentile(lat_ms, 50)) if n_req else math.nan,
        "p90_ms": float(np.percentile(lat_ms, 90)) if n_req else math.nan,
        "p99_ms": float(np.percentile(lat_ms, 99)) if n_req else math.nan,
        "mean_ms": float(lat_ms.mean()) if n_req else math.nan,
        "server_p50_ms": float(np.median(window.server_ms)) if window.server_ms else math.nan,
        "batch_size_request_mean": float(batch.mean()),  # batch size seen by the average request
        "batch_size_request_p50": float(np.percentile(batch, 50)),
        "batch_size_max": int(batch.max()),
        **side,
    }
    out["batch_size_mean"] = side["batched_images"] / side["batches"] if side["batches"] else math.nan
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", choices=("grpc-unary", "grpc-stream", "mlflow"), required=True)
    p.add_argument("--address", required=True, help="host:port (gRPC) or the /invocations URL (MLflow)")
    p.add_argument("--images", required=True, help="JSON list of image file paths")
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--images-per-request", type=int, default=1, help="MLflow only")
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--metrics-url", help="the gRPC server's Prometheus /metrics URL")
    args = p.parse_args()
    result = asyncio.run(measure(args, read_images(args.images)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
