"""The inspection service as a Ray Serve application (``adapt serve --engine ray``).

The same ``adapt.inspection.v1.InspectionService`` as ``adapt serve``, on an engine that already
does replicas, placement across machines, restarts and autoscaling:

- Ray's gRPC proxy (one per node, port ``--port``) takes the calls and routes each to a replica
  of the ``Inspection`` deployment. Every replica is a process holding the models the way
  ``adapt serve`` does (``services.hosted.HostedModel``: load, warm-up, hot reload when the alias
  moves or the file is replaced; each replica polls its source itself, so all of them follow)
  and answering with ``services.servicer.InspectionServicer``: same answers, ``needs_review``,
  heatmaps, feedback checks and status codes. Only the batching differs: inside a replica,
  decoded images are batched by Ray's ``@serve.batch`` instead of ``services.batching``.
- Token auth is checked in the replica (Ray's proxy has no interceptors); health is served as
  ``grpc.health.v1.Health/Check`` by the replicas (SERVING once their models are loaded) and by
  Ray itself on HTTP ``/-/healthz`` and gRPC ``ray.serve.RayServeAPIService/Healthz``.
- Feedback has one writer: a single ``Feedback`` replica owns ``--data-dir`` (the same
  ``FeedbackStore`` as ``adapt serve``) and the recent-request images for feedback that omits
  the image; the inspection replicas call it. So many replicas never write the CSV at once.

Ray's proxy listens on every interface (``[::]``) and speaks plaintext gRPC: there is no TLS
here (terminate TLS in front of it), use ``--token-file`` beyond a trusted network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2
from ray import serve
from ray.serve.config import AutoscalingConfig, gRPCOptions

from adapt.contract.model_uri import tracking_uri_or_default
from services.auth import TokenAuthInterceptor, read_tokens
from services.batching import BatchResult
from services.feedback import FeedbackStore, RecentRequests
from services.hosted import HostedModel, ModelUnavailableError
from services.logs import log_event
from services.metrics import ServerMetrics
from services.model import ModelLoadError, RuntimeConfig
from services.proto import inspection_pb2 as pb
from services.server import ServeConfig, ServeError
from services.servicer import SERVICE_NAME, InspectionServicer
from services.sources import SourceError, open_source

logger = logging.getLogger(__name__)

APP_NAME = "inspection"
GRPC_SERVICERS = (  # what Ray's gRPC proxy serves (it routes every method to the app's ingress)
    "services.proto.inspection_pb2_grpc.add_InspectionServiceServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
)


@dataclass(frozen=True)
class RayConfig:
    """``adapt serve --engine ray``: the ``ServeConfig`` of every replica plus where and how many."""

    serve: ServeConfig  # port = Ray's gRPC proxy port; host = its HTTP proxy's (health) address
    replicas: int = 1  # fixed number of replicas (when no autoscaling range is given)
    min_replicas: int | None = None  # autoscaling range; set both to autoscale
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0  # autoscaling aims at this many requests in flight per replica
    max_ongoing_requests: int = 64  # a replica takes at most this many at once (the rest wait in the proxy)
    replica_cpus: float = 1.0  # CPUs Ray reserves per replica (placement)
    address: str | None = None  # Ray cluster to join (HOST:PORT or "auto"); None = start a local one
    http_port: int = 8000  # Ray's HTTP proxy: GET /-/healthz for load balancers

    def __post_init__(self) -> None:
        if self.serve.tls_cert:
            raise ValueError("Ray's gRPC proxy has no TLS: terminate TLS in front of it (or use the default engine)")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("autoscaling needs both --min-replicas and --max-replicas")
        if self.autoscaling and not 0 <= self.min_replicas <= self.max_replicas >= 1:
            raise ValueError(f"need 0 <= min-replicas <= max-replicas >= 1, got {self.min_replicas}..{self.max_replicas}")
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.max_ongoing_requests < self.serve.batching.max_batch_size:
            raise ValueError("max ongoing requests per replica must be >= the max batch size")
        if self.target_ongoing_requests <= 0 or self.replica_cpus < 0:
            raise ValueError("target ongoing requests must be > 0 and replica CPUs >= 0")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """What ``InspectionServicer`` needs of a ``grpc.ServicerContext``, on Ray's request context."""

    def __init__(self, ray_context):
        self.ray_context = ray_context

    def time_remaining(self) -> None:  # Ray's proxy enforces its own request timeout
        return None

    def is_active(self) -> bool:
        return True

    def abort(self, code: grpc.StatusCode, details: str):
        raise _Aborted(code, details)


class _BatchedModel(HostedModel):
    """A ``HostedModel`` (sources, loading, hot reload) whose decoded images go to Ray's batcher."""

    def __init__(self, source, submit, **options):
        super().__init__(source, **options)
        self._submit = submit

    def classify(self, image: bytes, deadline: float | None) -> Future[BatchResult]:
        model = self.current
        if model is None:
            raise ModelUnavailableError(f"model {self.name or self.source.uri} is not loaded yet")
        return self._submit(model, model.preprocess(image))


class _RemoteRecent:
    """``RecentRequests`` kept by the ``Feedback`` replica, so feedback may reach any replica."""

    def __init__(self, handle):
        self.handle = handle

    def put(self, request_id: str, entry: RecentRequests.Entry) -> None:
        self.handle.remember.remote(request_id, entry)  # not awaited: the answer does not wait for it

    def get(self, request_id: str) -> RecentRequests.Entry | None:
        return self.handle.recall.remote(request_id).result()


class _RemoteStore:
    """``FeedbackStore.save`` run by the one ``Feedback`` replica (the single writer of the data dir)."""

    def __init__(self, handle):
        self.handle = handle

    def save(self, *args, **kwargs):
        return self.handle.save.remote(*args, **kwargs).result()


@serve.deployment(name="Feedback", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class FeedbackWriter:
    """The single writer of ``--data-dir`` and the keeper of recent request images."""

    def __init__(self, data_dir: str, cache_bytes: int):
        self.store = FeedbackStore(data_dir)
        self.recent = RecentRequests(cache_bytes)

    def remember(self, request_id: str, entry: RecentRequests.Entry) -> None:
        self.recent.put(request_id, entry)

    def recall(self, request_id: str) -> RecentRequests.Entry | None:
        return self.recent.get(request_id)

    def save(self, *args, **kwargs):
        return self.store.save(*args, **kwargs)  # raises ValueError / ImageDecodeError / OSError to the caller


@serve.deployment(name="Inspection")
class InspectionDeployment:
    """One replica: the models, the servicer, Ray's batcher; every RPC is a method of the same name."""

    def __init__(self, config: ServeConfig, feedback, max_ongoing_requests: int):
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool = ThreadPoolExecutor(max_workers=max_ongoing_requests, thread_name_prefix="rpc")
        self._inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._auth = TokenAuthInterceptor(read_tokens(config.token_file)) if config.token_file else None
        self._run_batch.set_max_batch_size(config.batching.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(config.batching.max_queue_delay_ms / 1000.0)
        runtime = RuntimeConfig(intra_op_threads=config.intra_op_threads, spin=config.ort_spin)
        self.models = [
            _BatchedModel(
                open_source(uri, config.tracking_uri),
                self._submit,
                runtime=runtime,
                batching=config.batching,
                reject_threshold=config.reject_threshold,
            )
            for uri in config.models
        ]
        for hosted in self.models:
            try:
                hosted.refresh()
            except (SourceError, ModelLoadError, OSError) as exc:
                if not config.wait_for_model:
                    raise ServeError(str(exc)) from exc
                log_event(logger, "model_not_loaded", level=logging.WARNING, source=hosted.source.uri, error=str(exc))
            hosted.start_watching(config.reload_interval)
        recent = _RemoteRecent(feedback) if config.feedback_cache_mb > 0 else RecentRequests(0)
        self.servicer = InspectionServicer(
            self.models,
            _RemoteStore(feedback),
            recent,
            ServerMetrics(),
            allow_new_labels=config.allow_new_labels,
            stream_window=2 * config.batching.max_batch_size,
        )

    # -- the RPCs (Ray's proxy calls the method named like the RPC) -------------------------

    async def Classify(self, request: pb.ClassifyRequest, grpc_context) -> pb.ClassifyResponse:
        return await self._unary(self.servicer.Classify, request, grpc_context, pb.ClassifyResponse)

    async def ListModels(self, request: pb.ListModelsRequest, grpc_context) -> pb.ListModelsResponse:
        return await self._unary(self.servicer.ListModels, request, grpc_context, pb.ListModelsResponse)

    async def SubmitFeedback(self, request: pb.SubmitFeedbackRequest, grpc_context) -> pb.SubmitFeedbackResponse:
        return await self._unary(self.servicer.SubmitFeedback, request, grpc_context, pb.SubmitFeedbackResponse)

    async def ClassifyStream(self, requests, grpc_context):
        """One answer per image, in order; a bad image gets ``response.error``, the stream goes on."""
        if not self._authorized(grpc_context):
            return
        loop = self._bind_loop()
        window = asyncio.Semaphore(2 * self.config.batching.max_batch_size)  # how far reading runs ahead
        pending: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    pending.put_nowait(loop.run_in_executor(self._pool, self._classify_item, request))
            finally:
                pending.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await pending.get()) is not None:
                response = await answer
                window.release()
                yield response
        finally:
            reader.cancel()

    async def Check(self, request: health_pb2.HealthCheckRequest, grpc_context) -> health_pb2.HealthCheckResponse:
        """``grpc.health.v1.Health/Check`` (open without a token, as in ``adapt serve``)."""
        if request.service not in ("", SERVICE_NAME):
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(f"unknown service {request.service!r}")
            return health_pb2.HealthCheckResponse()
        ready = all(h.current is not None for h in self.models)
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)

    # -- plumbing ---------------------------------------------------------------------------

    async def _unary(self, method, request, grpc_context, response_type):
        if not self._authorized(grpc_context):
            return response_type()
        self._bind_loop()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, method, request, _Context(grpc_context))
        except _Aborted as aborted:
            grpc_context.set_code(aborted.code)
            grpc_context.set_details(aborted.details)
            return response_type()

    def _classify_item(self, request: pb.ClassifyRequest) -> pb.ClassifyResponse:
        try:
            return self.servicer.Classify(request, _Context(None))
        except _Aborted as aborted:
            error = pb.ItemError(code=aborted.code.value[0], message=aborted.details)
            return pb.ClassifyResponse(request_id=request.request_id, error=error)

    def _authorized(self, grpc_context) -> bool:
        if self._auth is None:
            return True
        header = dict(grpc_context.invocation_metadata()).get("authorization", "")
        if self._auth.accepts(header):
            return True
        grpc_context.set_code(grpc.StatusCode.UNAUTHENTICATED)
        grpc_context.set_details("missing bearer token" if not header else "invalid bearer token")
        return False

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()  # the replica's loop, where Ray's batcher lives
        return self._loop

    def _submit(self, model, pixels: np.ndarray) -> Future[BatchResult]:
        """From a servicer thread: queue decoded pixels for Ray's batcher on the replica's loop."""
        return asyncio.run_coroutine_threadsafe(self._run_batch((model, pixels)), self._loop)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _run_batch(self, items: list[tuple]) -> list[BatchResult]:
        """Run a batch; items decoded for different model versions (during a hot reload) run apart."""
        groups: dict[int, list[int]] = {}
        for i, (model, _) in enumerate(items):
            groups.setdefault(id(model), []).append(i)
        results: list[BatchResult | None] = [None] * len(items)
        loop = asyncio.get_running_loop()
        for indices in groups.values():
            model = items[indices[0]][0]
            pixels = np.stack([items[i][1] for i in indices])
            probabilities = await loop.run_in_executor(self._inference, model.predict, pixels)
            for row, i in enumerate(indices):
                results[i] = BatchResult(model, probabilities[row], len(indices))
        return results

    def __del__(self) -> None:
        for hosted in getattr(self, "models", ()):
            hosted.stop()


def build_app(config: RayConfig, feedback_node_ip: str | None = None):
    """The Ray Serve application: ``Inspection`` replicas (ingress) and the one ``Feedback`` writer
    (on the node with ``feedback_node_ip``, where ``--data-dir`` was meant, when given)."""
    cfg = _absolute_paths(config.serve)
    writer = FeedbackWriter
    if feedback_node_ip:  # Ray gives every node a resource "node:<its ip>"
        writer = writer.options(ray_actor_options={"num_cpus": 0, "resources": {f"node:{feedback_node_ip}": 0.001}})
    feedback = writer.bind(cfg.data_dir, int(cfg.feedback_cache_mb * 1024 * 1024))
    # ONNX Runtime threads per replica: the CPUs it has, not the whole machine's (replicas share it)
    replica_config = replace(cfg, intra_op_threads=cfg.intra_op_threads or max(1, int(config.replica_cpus)))
    scaling = (
        {
            "autoscaling_config": AutoscalingConfig(
                min_replicas=config.min_replicas,
                max_replicas=config.max_replicas,
                target_ongoing_requests=config.target_ongoing_requests,
            )
        }
        if config.autoscaling
        else {"num_replicas": config.replicas}
    )
    inspection = InspectionDeployment.options(
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.replica_cpus},
        **scaling,
    )
    return inspection.bind(replica_config, feedback, config.max_ongoing_requests)


def _absolute_paths(cfg: ServeConfig) -> ServeConfig:
    """Replicas run in other working directories (and machines): relative paths made absolute here."""

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    tracking = tracking_uri_or_default(cfg.tracking_uri)
    if tracking.startswith("sqlite:///") and not tracking.startswith("sqlite:////"):
        tracking = "sqlite:///" + absolute(tracking.removeprefix("sqlite:///"))
    return replace(
        cfg,
        models=tuple(uri if uri.startswith("models:/") else absolute(uri) for uri in cfg.models),
        data_dir=absolute(cfg.data_dir),
        token_file=absolute(cfg.token_file) if cfg.token_file else None,
        tracking_uri=tracking,
    )


class RayInspection:
    """``start()``: join or start Ray, start Serve's proxies, deploy the app; ``stop()``: undo that."""

    def __init__(self, config: RayConfig):
        self.config = config
        self._started_ray = False

    def start(self) -> RayInspection:
        import ray

        cfg = self.config
        started = time.perf_counter()
        ray.init(address=cfg.address or "local", include_dashboard=False, log_to_driver=False)
        self._started_ray = cfg.address is None
        try:
            serve.start(
                http_options={"host": cfg.serve.host, "port": cfg.http_port},
                grpc_options=gRPCOptions(port=cfg.serve.port, grpc_servicer_functions=list(GRPC_SERVICERS)),
            )
            serve.run(build_app(cfg, ray.util.get_node_ip_address()), name=APP_NAME, blocking=False)
        except Exception as exc:  # a replica that cannot load its model fails the deployment
            self.stop()
            raise ServeError(f"Ray Serve could not deploy the inspection service: {str(exc).strip().splitlines()[-1]}") from exc
        log_event(
            logger,
            "serving",
            engine="ray",
            grpc=f"[::]:{cfg.serve.port}",
            healthz=f"http://{cfg.serve.host}:{cfg.http_port}/-/healthz",
            replicas=f"{cfg.min_replicas}..{cfg.max_replicas}" if cfg.autoscaling else cfg.replicas,
            cluster=cfg.address or "local",
            auth="token" if cfg.serve.token_file else "off",
            start_s=round(time.perf_counter() - started, 1),
        )
        return self

    def stop(self) -> None:
        """Delete the app; shut Serve and Ray down too when this process started them."""
        import ray

        if not ray.is_initialized():
            return
        try:
            if self._started_ray:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()
