"""``InspectionClient``: the factory-side client of the inspection service.

>>> with InspectionClient("inspect-01:50051", token="s3cret", root_cert="ca.pem") as client:
...     answer = client.classify("part_0001.png")
...     answer.label, answer.needs_review

Unary calls are retried with exponential backoff while the server is UNAVAILABLE (restarting,
reloading behind a load balancer), within the call's overall timeout. ``classify_many`` uses
one ClassifyStream call, which keeps the server's pipeline full.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc

from services.proto import inspection_pb2 as pb
from services.proto import inspection_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")
ImageInput = bytes | str | Path


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
            retries: extra attempts of a unary call while the server is UNAVAILABLE.
            backoff: first wait between attempts in seconds; doubles each time (with jitter).
            server_name: name to check the server certificate against, when it differs from the host.
            max_message_mb: largest message this client sends.
        """
        if bool(client_cert) != bool(client_key):
            raise ValueError("a client certificate needs its key, and the other way round")
        if client_cert and not root_cert:
            raise ValueError("client certificates (mTLS) need TLS: pass root_cert too")
        self.target, self.timeout, self.retries, self.backoff = target, timeout, retries, backoff
        size = int(max_message_mb * 1024 * 1024)
        options = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
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

    def classify(self, image: ImageInput, *, model: str = "", request_id: str = "") -> pb.ClassifyResponse:
        """Classify one image (encoded bytes or a file path)."""
        request = pb.ClassifyRequest(image=_read(image), model=model, request_id=request_id)
        return self._call(self._stub.Classify, request)

    def classify_many(
        self, images: Iterable[ImageInput], *, stream: bool = True, model: str = ""
    ) -> Iterator[pb.ClassifyResponse]:
        """Classify images in order, one response per image (check ``response.error`` when streaming).

        ``stream=True`` sends them all over one ClassifyStream call; files are read lazily as
        the stream advances. ``stream=False`` makes one Classify call per image (raising on
        the first error).
        """
        if not stream:
            for image in images:
                yield self.classify(image, model=model)
            return
        images = list(images)
        requests = (
            pb.ClassifyRequest(image=_read(image), model=model, request_id=uuid.uuid4().hex) for image in images
        )
        deadline = self.timeout * max(1, len(images))
        yield from self._stub.ClassifyStream(requests, timeout=deadline, metadata=self._metadata)

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self._call(self._stub.ListModels, pb.ListModelsRequest()).models)

    def submit_feedback(
        self, request_id: str, label: str, *, image: ImageInput | None = None, note: str = "", model: str = ""
    ) -> pb.SubmitFeedbackResponse:
        """Tell the server the true label of an earlier request (``image`` only if it may have forgotten it)."""
        request = pb.SubmitFeedbackRequest(
            request_id=request_id, label=label, image=_read(image) if image is not None else b"", note=note, model=model
        )
        return self._call(self._stub.SubmitFeedback, request)

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel is connected (``grpc.FutureTimeoutError`` otherwise)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> InspectionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request) -> T:
        give_up = time.monotonic() + self.timeout
        delay = self.backoff
        for attempt in range(self.retries + 1):
            remaining = give_up - time.monotonic()
            try:
                return method(request, timeout=max(remaining, 0.001), metadata=self._metadata)
            except grpc.RpcError as err:
                retryable = err.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries
                pause = delay * random.uniform(0.5, 1.0)
                if not retryable or time.monotonic() + pause >= give_up:
                    raise
                logger.info("server %s unavailable (%s); retrying in %.2fs", self.target, err.details(), pause)
                time.sleep(pause)
                delay *= 2
        raise AssertionError("unreachable")


def _read(image: ImageInput) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    return Path(image).expanduser().read_bytes()
