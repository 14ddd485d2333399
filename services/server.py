"""The inspection server: models, gRPC service, health, reflection, auth, metrics, shutdown.

Why a thread-pool ``grpc.server`` and not ``grpc.aio``: the per-request work is CPU-bound
native code (Pillow decode/resize, ONNX Runtime) that releases the GIL, so handler threads
decode concurrent requests truly in parallel and block cheaply on their batch's result; an
asyncio server would have to push that same work to a thread pool anyway, adding a hop per
request. Batching happens in ``services.batching``, independent of the transport.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.auth import TokenAuthInterceptor, read_tokens, server_credentials
from services.feedback import FeedbackStore, RecentRequests
from services.hosted import BatchingConfig, HostedModel
from services.logs import log_event
from services.metrics import ServerMetrics
from services.model import ModelLoadError, RuntimeConfig
from services.proto import inspection_pb2_grpc as pb_grpc
from services.sources import ModelSource, SourceError, open_source
from services.servicer import SERVICE_NAME, InspectionServicer

logger = logging.getLogger(__name__)


class ServeError(RuntimeError):
    """The server cannot start (no loadable model, port taken, bad TLS files, ...)."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``adapt serve`` can set; see ``adapt serve --help`` for each option."""

    models: tuple[str, ...] = ()  # model URIs (local .onnx, models:/NAME@ALIAS, models:/NAME/VERSION); first = default
    host: str = "0.0.0.0"  # address to listen on
    port: int = 50051  # 0 = any free port (see InspectionServer.port)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    workers: int = 32  # gRPC handler threads (concurrent requests being decoded / waiting)
    intra_op_threads: int = 0  # ONNX Runtime threads per inference; 0 = its default
    ort_spin: str = "off"  # ONNX Runtime threads busy-waiting: off | run (only during an inference) | on
    tls_cert: str | None = None  # server certificate (PEM); with tls_key enables TLS
    tls_key: str | None = None
    tls_ca: str | None = None  # CA of client certificates; set = mTLS (clients must present one)
    token_file: str | None = None  # bearer tokens, one per line; set = token auth
    data_dir: str = "feedback"  # where SubmitFeedback stores images + feedback.csv
    reject_threshold: float | None = None  # overrides every model's threshold
    reload_interval: float = 10.0  # seconds between checks for a new model version; 0 = never
    metrics_port: int = 0  # Prometheus /metrics port; 0 = off
    max_message_mb: float = 32.0  # largest request accepted (bigger -> RESOURCE_EXHAUSTED)
    tracking_uri: str | None = None  # MLflow tracking/registry URI for models:/ URIs
    allow_new_labels: bool = False  # accept feedback labels the model doesn't know
    feedback_cache_mb: float = 256.0  # recent request images kept for feedback without image
    wait_for_model: bool = False  # start even when no version can be loaded yet (UNAVAILABLE until one is)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("at least one model is needed")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both a certificate and a key")
        if self.tls_ca and not self.tls_cert:
            raise ValueError("mTLS (a client CA) needs server TLS (a certificate and key) too")
        if self.reject_threshold is not None and not 0.0 <= self.reject_threshold <= 1.0:
            raise ValueError(f"reject threshold must be in [0, 1], got {self.reject_threshold}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.max_message_mb <= 0:
            raise ValueError(f"max message size must be positive, got {self.max_message_mb} MB")
        if not 0 <= self.port <= 65535 or not 0 <= self.metrics_port <= 65535:
            raise ValueError("ports must be in 0..65535")


class InspectionServer:
    """``start()`` it, ``stop()`` it (gracefully). ``sources`` replaces ``config.models`` (tests)."""

    def __init__(self, config: ServeConfig, sources: list[ModelSource] | None = None):
        self.config = config
        self.metrics = ServerMetrics()
        self.health = health.HealthServicer()
        runtime = RuntimeConfig(intra_op_threads=config.intra_op_threads, spin=config.ort_spin)
        sources = sources or [open_source(uri, config.tracking_uri) for uri in config.models]
        self.models = [
            HostedModel(
                source,
                runtime=runtime,
                batching=config.batching,
                reject_threshold=config.reject_threshold,
                on_batch=self._batch_done,
                on_reload=self._model_loaded,
            )
            for source in sources
        ]
        self.port = 0
        self.metrics_port = 0
        self._server: grpc.Server | None = None
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        return f"{_host_for_url(self.config.host)}:{self.port}"

    def start(self) -> InspectionServer:
        """Load the models, listen, and serve in background threads (``ServeError`` if it can't)."""
        try:
            return self._start()
        except BaseException:
            for hosted in self.models:
                hosted.stop()
            if self._server is not None:
                self._server.stop(0)
            raise

    def _start(self) -> InspectionServer:
        cfg = self.config
        interceptors = [TokenAuthInterceptor(self._read_tokens())] if cfg.token_file else []
        credentials = self._credentials()  # read before the (slow) model loading: fail fast
        self._load_models()
        max_bytes = int(cfg.max_message_mb * 1024 * 1024)
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="rpc"),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", max_bytes),
                ("grpc.so_reuseport", 0),  # a taken port is an error, not a silent second listener
            ],
            maximum_concurrent_rpcs=cfg.workers + cfg.batching.max_queue,
        )
        servicer = InspectionServicer(
            self.models,
            FeedbackStore(cfg.data_dir),
            RecentRequests(int(cfg.feedback_cache_mb * 1024 * 1024)),
            self.metrics,
            allow_new_labels=cfg.allow_new_labels,
            stream_window=2 * cfg.batching.max_batch_size,
        )
        pb_grpc.add_InspectionServiceServicer_to_server(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server,
        )
        self.port = self._bind(credentials)
        if warning := exposure_warning(cfg, self.port):
            logger.warning("%s", warning)
        self._server.start()
        self._update_health()
        for hosted in self.models:
            self.metrics.track_queue(hosted.name or hosted.source.uri, lambda b=hosted.batcher: b.depth)
            hosted.start_watching(cfg.reload_interval)
        if cfg.metrics_port:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.host)
            except OSError as exc:
                raise ServeError(f"cannot serve metrics on port {cfg.metrics_port}: {exc.strerror or exc}") from exc
        log_event(
            logger,
            "serving",
            address=self.address,
            tls="mtls" if cfg.tls_ca else "tls" if cfg.tls_cert else "off",
            auth="token" if cfg.token_file else "off",
            models=",".join(h.name for h in self.models),
            max_batch_size=cfg.batching.max_batch_size,
            metrics_port=self.metrics_port or "off",
        )
        return self

    def stop(self, grace: float | None = 30.0) -> None:
        """Graceful shutdown: NOT_SERVING, refuse new calls, finish in-flight ones (up to ``grace`` s)."""
        if self._server is None or self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        log_event(logger, "draining", grace_s=grace, queued=sum(h.batcher.depth for h in self.models))
        self._server.stop(grace).wait()
        for hosted in self.models:
            hosted.stop()
        self.metrics.close()
        log_event(logger, "stopped")

    def stop_now(self) -> None:
        """Cancel calls still in flight (e.g. during a ``stop(grace)`` that takes too long)."""
        if self._server is not None:
            self._server.stop(0)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``stop()`` has been called (True) or ``timeout`` passed (False)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> InspectionServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=5.0)

    def _load_models(self) -> None:
        for hosted in self.models:
            try:
                hosted.refresh()
            except (SourceError, ModelLoadError, OSError) as exc:
                if not self.config.wait_for_model:
                    raise ServeError(str(exc)) from exc
                log_event(logger, "model_not_loaded", level=logging.WARNING, source=hosted.source.uri, error=str(exc))

    def _read_tokens(self) -> list[str]:
        try:
            return read_tokens(self.config.token_file)
        except OSError as exc:
            raise ServeError(f"cannot read token file {self.config.token_file}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise ServeError(str(exc)) from exc

    def _credentials(self) -> grpc.ServerCredentials | None:
        cfg = self.config
        if not cfg.tls_cert:
            return None
        try:
            return server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
        except OSError as exc:
            raise ServeError(f"cannot read TLS file {exc.filename}: {exc.strerror or exc}") from exc

    def _bind(self, credentials: grpc.ServerCredentials | None) -> int:
        address = f"{_host_for_url(self.config.host)}:{self.config.port}"
        try:
            if credentials is not None:
                port = self._server.add_secure_port(address, credentials)
            else:
                port = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ServeError(f"cannot listen on {address} (port in use or address not available)") from exc
        if not port:
            raise ServeError(f"cannot listen on {address} (port in use or address not available)")
        return port

    def _batch_done(self, model_name: str, size: int) -> None:
        self.metrics.batch_size.labels(model_name).observe(size)

    def _model_loaded(self, hosted: HostedModel, model) -> None:
        self.metrics.model_loaded(hosted.name, model.version, hosted.source.uri)
        if self._server is not None:
            self._update_health()

    def _update_health(self) -> None:
        if self._stopped.is_set():
            return
        ready = all(h.current is not None for h in self.models)
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)


def exposure_warning(cfg: ServeConfig, port: int) -> str | None:
    """One line when the server listens beyond this machine without a token and/or TLS, else None."""
    if _is_loopback(cfg.host) or (cfg.token_file and cfg.tls_cert):
        return None
    missing = " or ".join(m for m, on in (("a token", cfg.token_file), ("TLS", cfg.tls_cert)) if not on)
    how = []
    if not cfg.token_file:
        how.append("--token-file FILE (one secret per line; clients pass --token-file too)")
    if not cfg.tls_cert:
        how.append("--tls-cert PEM --tls-key PEM")
    return (
        f"serving on {_host_for_url(cfg.host)}:{port} without {missing}: anyone who can reach this port can use it; "
        f"add {' and '.join(how)}, or listen on this machine only with --host 127.0.0.1"
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: may well be reachable from elsewhere
        return False


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
