"""Prometheus metrics of the inspection server (``adapt serve --metrics-port``).

Each server has its own ``CollectorRegistry`` (several servers can live in one test process).
Counted per RPC for unary methods and per image for ClassifyStream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """The server's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "adapt_requests",
            "Requests handled, by method and gRPC status code (ClassifyStream: per image).",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "adapt_request_latency_seconds",
            "Server-side latency by method (ClassifyStream: per image).",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "adapt_batch_size",
            "Images per model run (dynamic batching).",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "adapt_queue_depth", "Requests waiting for the model.", ["model"], registry=self.registry
        )
        self.model_info = Gauge(
            "adapt_model_info",
            "The model version being served (value 1).",
            ["model", "version", "source"],
            registry=self.registry,
        )
        self.reloads = Counter("adapt_model_reloads", "Model versions loaded.", ["model"], registry=self.registry)
        self.feedback = Counter(
            "adapt_feedback", "Feedback images stored, by label.", ["label"], registry=self.registry
        )
        self._served: dict[str, tuple[str, str, str]] = {}  # model -> its model_info labels
        self._http = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def track_queue(self, model: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(model).set_function(depth)

    def model_loaded(self, model: str, version: str, source: str) -> None:
        previous = self._served.pop(model, None)
        if previous is not None:
            self.model_info.remove(*previous)
        self._served[model] = (model, version, source)
        self.model_info.labels(model, version, source).set(1)
        self.reloads.labels(model).inc()

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Expose ``/metrics`` over HTTP on ``port``; returns the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
