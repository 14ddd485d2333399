"""``adapt serve --engine ray`` for real: a 2-node Ray cluster on this machine (head + worker, both
127.0.0.1, started with ``ray start``), 2 replicas, one on each node, answering through Ray's gRPC
proxy; token auth and status codes; the single feedback writer; the alias moving; a killed replica.

Ray's gRPC proxy always listens on ``[::]``. As root, the tests therefore run again inside a
network namespace that has only loopback (``unshare -n``), so nothing is reachable from outside;
elsewhere they run here. Every process started is stopped by its own id (never ``ray stop``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest
from serving_fixtures import free_port, image_bytes, make_tiny_onnx

pytest.importorskip("ray.serve", reason="needs the 'ray' extra")
psutil = pytest.importorskip("psutil")

from services.client import InspectionClient  # noqa: E402
from services.proto import inspection_pb2 as pb  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t0ken-for-tests"
REPLICA = "ServeReplica:inspection:Inspection"  # the replicas' process title
IN_NAMESPACE = os.environ.get("ADAPT_TEST_NETNS") == "1"
CAN_UNSHARE = os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip")


@pytest.mark.unit
def test_ray_options_are_checked_before_anything_starts():
    from services.ray_app import RayConfig
    from services.server import ServeConfig

    base = ServeConfig(models=("m.onnx",))
    assert RayConfig(base, min_replicas=1, max_replicas=4).autoscaling
    for options, message in (
        ({"serve": ServeConfig(models=("m.onnx",), tls_cert="c.pem", tls_key="k.pem")}, "no TLS"),
        ({"min_replicas": 2}, "both --min-replicas and --max-replicas"),
        ({"min_replicas": 3, "max_replicas": 2}, "min-replicas <= max-replicas"),
        ({"max_ongoing_requests": 4}, "max batch size"),
    ):
        with pytest.raises(ValueError, match=message):
            RayConfig(**{"serve": base, **options})


@pytest.mark.unit
def test_paths_reach_replicas_as_absolute_paths(tmp_path, monkeypatch):
    """Replicas run in Ray's working directories, maybe on other machines: no relative path survives."""
    from services.ray_app import _absolute_paths
    from services.server import ServeConfig

    monkeypatch.chdir(tmp_path)
    cfg = ServeConfig(models=("m.onnx", "models:/tiny@champion"), token_file="t.txt", data_dir="fb", tracking_uri="sqlite:///r.db")
    shipped = _absolute_paths(cfg)
    assert shipped.models == (str(tmp_path / "m.onnx"), "models:/tiny@champion")
    assert (shipped.token_file, shipped.data_dir) == (str(tmp_path / "t.txt"), str(tmp_path / "fb"))
    assert shipped.tracking_uri == f"sqlite:///{tmp_path / 'r.db'}"


@pytest.mark.unit
def test_the_ray_app_imports_no_torch():
    code = "import sys, services.ray_app; assert 'torch' not in sys.modules and 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


if CAN_UNSHARE and not IN_NAMESPACE:

    @pytest.mark.integration
    @pytest.mark.slow
    def test_ray_serve_in_a_loopback_only_network_namespace():
        """Runs this module again inside ``unshare -n`` (only ``lo``, brought up): Ray binds ``[::]``."""
        script = 'ip link set lo up && exec "$0" -m pytest -q -p no:cacheprovider -m integration "$1"'
        env = {**os.environ, "ADAPT_TEST_NETNS": "1"}
        proc = subprocess.run(
            ["unshare", "-n", "sh", "-c", script, sys.executable, __file__],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
        assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]

else:

    class Cluster:
        """``ray start`` head + worker (1 CPU each) and ``adapt serve --engine ray`` on them."""

        def __init__(self, root: Path):
            self.root = root
            self.procs: dict[str, subprocess.Popen] = {}
            self.logs: dict[str, Path] = {}
            self.gcs, self.grpc, self.http = free_port(), free_port(), free_port()
            self.address = f"127.0.0.1:{self.grpc}"
            home = root / "home"  # Ray writes its cluster token under ~/.ray: keep it in the test's dir
            home.mkdir()
            self.env = {
                **os.environ,
                "HOME": str(home),
                "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "RAY_USAGE_STATS_ENABLED": "0",
                "OMP_NUM_THREADS": "1",
            }

        def start(self, name: str, args: list[str]) -> subprocess.Popen:
            log = self.logs[name] = self.root / f"{name}.log"
            with open(log, "w") as fh:
                proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
            self.procs[name] = proc
            return proc

        def ray(self, name: str, *args: str) -> None:
            ray = Path(sys.executable).with_name("ray")
            common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
            self.start(name, [str(ray if ray.exists() else shutil.which("ray")), "start", *common, *args])

        def log(self, name: str) -> str:
            return self.logs[name].read_text(errors="replace")

        def wait_for_log(self, name: str, text: str, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while text not in self.log(name):
                code = self.procs[name].poll()
                assert code is None, f"{name} exited with {code}:\n{self.log(name)[-4000:]}"
                assert time.monotonic() < deadline, f"{name}: no {text!r} in {timeout:.0f} s:\n{self.log(name)[-4000:]}"
                time.sleep(0.3)

        def replicas(self) -> dict[str, list[int]]:
            """Replica process ids under each node's ``ray start`` process."""
            found = {}
            for node in ("head", "worker"):
                children = psutil.Process(self.procs[node].pid).children(recursive=True)
                found[node] = [p.pid for p in children if _title(p).startswith(f"ray::{REPLICA}")]
            return found

        def stop(self) -> None:
            """The app first (SIGTERM: the driver deletes it), then every process of both nodes, by id."""
            serve = self.procs.get("serve")
            if serve is not None and serve.poll() is None:
                serve.send_signal(signal.SIGTERM)
                try:
                    serve.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    serve.kill()
                    serve.wait()
            nodes = [self.procs[n] for n in ("worker", "head") if n in self.procs and self.procs[n].poll() is None]
            processes = [psutil.Process(p.pid) for p in nodes]
            processes += [c for p in processes for c in p.children(recursive=True)]
            for p in processes:
                try:
                    p.terminate()
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(processes, timeout=5)
            for p in alive:
                p.kill()
            for p in nodes:
                p.wait()

    def _title(process) -> str:
        try:
            return " ".join(process.cmdline())
        except psutil.Error:
            return ""

    class Registry:
        """A sqlite MLflow registry whose ``tiny@champion`` alias the tests move."""

        def __init__(self, root: Path):
            import mlflow

            os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
            self.root = root
            self.uri = f"sqlite:///{root / 'mlflow.db'}"
            self.client = mlflow.MlflowClient(tracking_uri=self.uri)
            self.experiment = self.client.create_experiment("ray", artifact_location=str(root / "artifacts"))

        def register(self, tag: str) -> str:
            import mlflow
            import mlflow.onnx
            import onnx

            mlflow.set_tracking_uri(self.uri)
            model = onnx.load(make_tiny_onnx(self.root / tag / "model.onnx", name="", version=""))
            with mlflow.start_run(experiment_id=self.experiment):
                info = mlflow.onnx.log_model(model, name="model", registered_model_name="tiny", pip_requirements=["onnxruntime"])
            version = str(info.registered_model_version)
            self.client.set_registered_model_alias("tiny", "champion", version)
            return version

    @pytest.fixture(scope="module")
    def cluster():
        root = Path(tempfile.mkdtemp(prefix="adapt-ray-"))  # short: Ray's socket paths live below it
        registry = Registry(root)
        first = registry.register("v1")
        (root / "tokens.txt").write_text(f"# test token\n{TOKEN}\n")
        c = Cluster(root)
        c.registry, c.first_version = registry, first
        try:
            c.ray("head", "--head", f"--port={c.gcs}", f"--temp-dir={root / 'ray'}", "--include-dashboard=false")
            c.wait_for_log("head", "Ray runtime started", 90)
            c.ray("worker", f"--address=127.0.0.1:{c.gcs}")
            c.wait_for_log("worker", "Ray runtime started", 90)
            c.start("serve", [
                sys.executable, "-m", "adapt", "serve", "--engine", "ray", "--address", f"127.0.0.1:{c.gcs}",
                "--replicas", "2", "--replica-cpus", "1", "--model", "models:/tiny@champion",
                "--tracking-uri", registry.uri, "--port", str(c.grpc), "--http-port", str(c.http), "--host", "127.0.0.1",
                "--token-file", str(root / "tokens.txt"), "--data-dir", str(root / "feedback"),
                "--reload-interval", "0.5", "--max-batch-size", "8",
            ])  # fmt: skip
            c.wait_for_log("serve", "serving engine=ray", 150)
            yield c
        finally:
            c.stop()
            shutil.rmtree(root, ignore_errors=True)

    def _client(c: Cluster, token: str | None = TOKEN) -> InspectionClient:
        return InspectionClient(c.address, token=token, timeout=20)

    @pytest.mark.integration
    @pytest.mark.slow
    def test_two_replicas_one_per_node_answer_like_adapt_serve(cluster):
        placed = cluster.replicas()
        assert len(placed["head"]) == 1 and len(placed["worker"]) == 1, placed
        with _client(cluster) as client:
            dark, bright, grey = (client.classify(image_bytes(b)) for b in (10, 240, 128))
            assert (dark.label, bright.label) == ("good", "defect")
            assert not dark.needs_review and grey.needs_review and grey.top_probability < grey.reject_threshold
            assert dark.model_name == "tiny" and dark.model_version == cluster.first_version
            streamed = list(client.classify_many([image_bytes(10), b"not an image", image_bytes(240)]))
            assert [r.label for r in streamed] == ["good", "", "defect"]
            assert streamed[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            (info,) = client.list_models()
            assert info.loaded and info.source_uri == "models:/tiny@champion" and list(info.labels) == ["good", "defect"]

    @pytest.mark.integration
    @pytest.mark.slow
    def test_token_health_and_status_codes_match_adapt_serve(cluster):
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with _client(cluster, token=None) as anonymous, _client(cluster, token="wrong") as wrong:
            for client, reason in ((anonymous, "missing"), (wrong, "invalid")):
                with pytest.raises(grpc.RpcError) as err:
                    client.classify(image_bytes(10))
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and reason in err.value.details()
            anonymous.wait_until_serving(10)  # health needs no token
        with grpc.insecure_channel(cluster.address) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with _client(cluster) as client:
            for call, code in (
                (lambda: client.classify(b"not an image"), grpc.StatusCode.INVALID_ARGUMENT),
                (lambda: client.classify(image_bytes(10), model="nope"), grpc.StatusCode.NOT_FOUND),
                (lambda: client.submit_feedback("no-such-request", "good"), grpc.StatusCode.NOT_FOUND),
            ):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == code, err.value.details()
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{cluster.http}/-/healthz", timeout=10) as reply:
            assert reply.status == 200  # what an HTTP load balancer probes

    @pytest.mark.integration
    @pytest.mark.slow
    def test_feedback_from_every_replica_goes_to_one_writer(cluster):
        with _client(cluster) as client:
            ids = [client.classify(image_bytes(200 + i), request_id=f"req-{i}").request_id for i in range(6)]
            time.sleep(0.5)  # the recent-image hand-over to the writer is not awaited by Classify
            stored = [client.submit_feedback(i, "good", note="ray") for i in ids]  # no image: the writer kept it
            assert all(not s.duplicate and s.predicted == "defect" for s in stored)
            assert client.submit_feedback(ids[0], "good").duplicate
        rows = (cluster.root / "feedback" / "feedback.csv").read_text().splitlines()
        assert len(rows) == 1 + len(ids) and all((cluster.root / "feedback" / "good" / f"{i}.png").exists() for i in ids)

    @pytest.mark.integration
    @pytest.mark.slow
    def test_every_replica_follows_the_alias_without_failed_requests(cluster):
        failures, answered, stop = [], [], threading.Event()

        def load():
            with _client(cluster) as client:
                while not stop.is_set():
                    try:
                        answered.append(client.classify(image_bytes(10)).model_version)
                    except grpc.RpcError as err:
                        failures.append(f"{err.code().name}: {err.details()}")

        worker = threading.Thread(target=load)
        worker.start()
        try:
            second = cluster.registry.register("v2")
            deadline = time.monotonic() + 60
            with _client(cluster) as client:
                while [client.classify(image_bytes(240)).model_version for _ in range(12)] != [second] * 12:
                    assert time.monotonic() < deadline, "not every replica moved to the new version"
                    time.sleep(0.2)
        finally:
            stop.set()
            worker.join()
        assert not failures, failures[:5]
        assert answered and answered[-1] == second

    @pytest.mark.integration
    @pytest.mark.slow
    def test_a_killed_replica_is_replaced_and_retries_cover_its_requests(cluster):
        """Requests in flight on a killed replica fail INTERNAL ("actor died") at Ray's proxy, which
        re-routes nothing by itself; the product's client retries Classify on INTERNAL (it is
        idempotent), and a request it still gives up on succeeds when the caller sends it again.
        Ray starts a new replica by itself."""
        answered, gave_up, lost = [], [], []
        stop = threading.Event()

        def load():
            client = InspectionClient(cluster.address, token=TOKEN, timeout=20, retries=4, backoff=0.5)
            while not stop.is_set():
                deadline = time.monotonic() + 60
                while True:  # the caller's own retry of a request the client gave up on
                    try:
                        answered.append(client.classify(image_bytes(240)).label)
                        break
                    except grpc.RpcError as err:
                        gave_up.append(f"{err.code().name}: {err.details()}")
                        if time.monotonic() > deadline:
                            lost.append(gave_up[-1])
                            break
                        time.sleep(1.0)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            victim = cluster.replicas()["worker"][0]
            before = len(answered)
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 90
            while True:  # Ray starts a new replica by itself
                placed = cluster.replicas()
                if sum(len(p) for p in placed.values()) == 2 and victim not in placed["worker"] + placed["head"]:
                    break
                assert time.monotonic() < deadline, f"no replacement replica: {placed}"
                time.sleep(0.5)
            time.sleep(2.0)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not lost, lost[:3]
        assert len(answered) > before + 10 and set(answered) == {"defect"}
        # what the client did not cover itself is only the dying replica's requests
        assert all("INTERNAL" in f or "UNAVAILABLE" in f for f in gave_up), gave_up[:3]

