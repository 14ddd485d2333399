"""``InspectionClient``: the factory-side client of the inspection service.

>>> with InspectionClient("inspect-01:50051", token="s3cret", root_cert="ca.pem") as client:
...     answer = client.classify("part_0001.png")
...     answer.label, answer.needs_review

Calls are retried by gRPC itself (the channel's service-config ``retryPolicy``) with exponential
backoff while the server is UNAVAILABLE (restarting, reloading behind a load balancer), and
Classify / ListModels also on INTERNAL (a Ray Serve replica that died mid-request), within the
call's overall timeout. ``classify_many`` uses one ClassifyStream call, which keeps the
server's pipeline full. ``wait_until_serving`` polls ``grpc.health.v1`` (for scripts that start
a server and a client together); ``connection_problem`` turns an UNAVAILABLE error into a few
words for the user.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.proto import inspection_pb2 as pb
from services.proto import inspection_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

ImageInput = bytes | str | Path
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InspectionService"].full_name
MAX_GRPC_ATTEMPTS = 5  # gRPC caps a retry policy's maxAttempts at 5


class NotServing(TimeoutError):
    """The server did not report SERVING in time. ``answered``: it was reachable (but not ready)."""

    def __init__(self, problem: str, answered: bool):
        super().__init__(problem)
        self.problem, self.answered = problem, answered


class InspectionClient:
    """A connection to one inspection server (thread-safe; reuse it)."""

    def __init__(
        self,
        target: str,
        *,
        root_cert: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.2,
        server_name: str | None = None,
        max_message_mb: float = 64.0,
    ):
        """
        Args:
            target: ``host:port`` of the server.
            root_cert: CA certificate (PEM) that signed the server's certificate; set = TLS.
            client_cert, client_key: this client's certificate and key, for mTLS servers.
            token: bearer token sent as ``authorization: Bearer <token>``.
            timeout: deadline of each call in seconds (for ``classify_many``: per image).
            retries: extra attempts of a call while the server is UNAVAILABLE, or a Classify /
                ListModels fails INTERNAL (at most 4).
            backoff: first wait between attempts in seconds; doubles each time (with jitter).
            server_name: name to check the server certificate against, when it differs from the host.
            max_message_mb: largest message this client sends.
        """
        if bool(client_cert) != bool(client_key):
            raise ValueError("a client certificate needs its key, and the other way round")
        if client_cert and not root_cert:
            raise ValueError("client certificates (mTLS) need TLS: pass root_cert too")
        self.target, self.timeout = target, timeout
        size = int(max_message_mb * 1024 * 1024)
        options = [
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            ("grpc.service_config", _service_config(retries, backoff)),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_cert:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(root_cert).expanduser().read_bytes(),
                private_key=Path(client_key).expanduser().read_bytes() if client_key else None,
                certificate_chain=Path(client_cert).expanduser().read_bytes() if client_cert else None,
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._stub = pb_grpc.InspectionServiceStub(self._channel)
        if logger.isEnabledFor(logging.DEBUG):  # reconnects are gRPC's; show them with -v
            self._channel.subscribe(lambda state: logger.debug("connection to %s: %s", target, state.name))

    def classify(self, image: ImageInput, *, model: str = "", request_id: str = "", heatmap: bool = False) -> pb.ClassifyResponse:
        """Classify one image (encoded bytes or a file path); ``heatmap``: also ask where the defect is."""
        request = pb.ClassifyRequest(image=_read(image), model=model, request_id=request_id, heatmap=heatmap)
        return self._stub.Classify(request, timeout=self.timeout, metadata=self._metadata)

    def classify_many(
        self, images: Iterable[ImageInput], *, stream: bool = True, model: str = "", heatmap: bool = False
    ) -> Iterator[pb.ClassifyResponse]:
        """Classify images in order, one response per image (check ``response.error`` when streaming).

        ``stream=True`` sends them all over one ClassifyStream call; files are read lazily as
        the stream advances. ``stream=False`` makes one Classify call per image (raising on
        the first error).
        """
        if not stream:
            for image in images:
                yield self.classify(image, model=model, heatmap=heatmap)
            return
        images = list(images)
        requests = (
            pb.ClassifyRequest(image=_read(image), model=model, request_id=uuid.uuid4().hex, heatmap=heatmap) for image in images
        )
        deadline = self.timeout * max(1, len(images))
        yield from self._stub.ClassifyStream(requests, timeout=deadline, metadata=self._metadata)

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata).models)

    def submit_feedback(
        self, request_id: str, label: str, *, image: ImageInput | None = None, note: str = "", model: str = ""
    ) -> pb.SubmitFeedbackResponse:
        """Tell the server the true label of an earlier request (``image`` only if it may have forgotten it)."""
        request = pb.SubmitFeedbackRequest(
            request_id=request_id, label=label, image=_read(image) if image is not None else b"", note=note, model=model
        )
        return self._stub.SubmitFeedback(request, timeout=self.timeout, metadata=self._metadata)

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel is connected (``grpc.FutureTimeoutError`` otherwise)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def wait_until_serving(self, timeout: float, poll_interval: float = 0.5, check_timeout: float = 5.0) -> None:
        """Poll the server's ``grpc.health.v1`` check until it says SERVING (``timeout=0``: ask once).

        Raises ``NotServing`` when ``timeout`` seconds passed without SERVING; RpcError for
        answers other than UNAVAILABLE / DEADLINE_EXCEEDED / NOT_FOUND (e.g. UNIMPLEMENTED: no
        health service).
        """
        health = health_pb2_grpc.HealthStub(self._channel)
        deadline = time.monotonic() + timeout
        problem, answered = "", False
        while True:
            remaining = deadline - time.monotonic()
            try:
                request = health_pb2.HealthCheckRequest()
                reply = health.Check(request, timeout=min(check_timeout, remaining) if remaining > 0.1 else check_timeout)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                problem, answered = "health: " + health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), True
            except grpc.RpcError as err:
                # NOT_FOUND: a proxy is up but the service behind it is not deployed yet (Ray Serve's
                # "Application metadata not set"); the server itself registers the overall health
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    problem, answered = f"not deployed yet ({err.details()})", True
                elif err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                if not problem or err.code() == grpc.StatusCode.UNAVAILABLE:  # keep "refused" over a late timeout
                    problem, answered = connection_problem(err), False
            if time.monotonic() + poll_interval >= deadline:
                raise NotServing(problem, answered)
            logger.debug("server %s not ready yet (%s)", self.target, problem)
            time.sleep(poll_interval)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> InspectionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

def _service_config(retries: int, backoff: float) -> str:
    """Channel service config: retry every InspectionService call while the server is UNAVAILABLE,
    and the idempotent unary calls (Classify, ListModels) on INTERNAL too: that is how Ray Serve's
    proxy answers the requests a dying replica held ("actor died"); a retry reaches a live one."""
    if retries < 1:
        return json.dumps({"methodConfig": []})

    def policy(*codes: str) -> dict:
        return {
            "maxAttempts": min(retries + 1, MAX_GRPC_ATTEMPTS),
            "initialBackoff": f"{backoff:g}s",
            "maxBackoff": f"{max(backoff, 2.0):g}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": list(codes),
        }

    idempotent = [{"service": SERVICE_NAME, "method": m} for m in ("Classify", "ListModels")]
    return json.dumps({"methodConfig": [
        {"name": idempotent, "retryPolicy": policy("UNAVAILABLE", "INTERNAL")},
        {"name": [{"service": SERVICE_NAME}], "retryPolicy": policy("UNAVAILABLE")},
    ]})


_PROBLEMS = (  # (text in gRPC's details, lower case) -> what to tell the user
    ("connection refused", "connection refused"),
    ("domain name not found", "unknown host"),
    ("errors resolving", "unknown host"),
    ("connection reset", "connection reset"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network unreachable"),
    ("handshake", "TLS handshake failed"),
    ("ssl", "TLS handshake failed"),
    ("timeout", "connection timed out"),
    ("deadline", "connection timed out"),
    ("socket closed", "connection closed by the server"),
)


def connection_problem(err: grpc.RpcError) -> str:
    """Why a call could not reach the server, in a few words (``connection refused``, ``unknown host``...)."""
    if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer in time"
    details = (err.details() or "").strip()
    lowered = details.lower()
    for needle, problem in _PROBLEMS:
        if needle in lowered:
            return problem
    last = details.splitlines()[0].rsplit(": ", 1)[-1] if details else ""
    return last or err.code().name.lower()


def _read(image: ImageInput) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    return Path(image).expanduser().read_bytes()
