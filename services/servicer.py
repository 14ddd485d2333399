"""The four RPCs of ``adapt.inspection.v1.InspectionService`` (see the .proto for the contract).

Each request is decoded in the gRPC handler thread that received it (decoding of concurrent
requests runs in parallel), then queued for its model's batcher; the handler waits for its
row of the batch output. Errors become gRPC status codes with a one-line reason; nothing a
client sends can take the server down.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from PIL import UnidentifiedImageError

from adapt.contract.imageio import ImageDecodeError
from services.batching import BatcherStoppedError, BatchResult, DeadlineExpiredError, QueueFullError
from services.feedback import FeedbackStore, RecentRequests, check_label, check_request_id
from services.hosted import HostedModel, ModelUnavailableError
from services.logs import log_event
from services.metrics import ServerMetrics
from services.proto import inspection_pb2 as pb
from services.proto import inspection_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

_NO_DEADLINE_S = 1e6
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InspectionService"].full_name


class RequestError(Exception):
    """A request that fails with a gRPC status code and a one-line reason."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class _Submitted:
    """A request queued for its model (or failed before that)."""

    request_id: str
    image: bytes
    started: float
    hosted: HostedModel | None = None
    future: object = None
    error: RequestError | None = None
    heatmap: bool = False  # the request asked for a heatmap


class InspectionServicer(pb_grpc.InspectionServiceServicer):
    def __init__(
        self,
        models: list[HostedModel],
        feedback: FeedbackStore,
        recent: RecentRequests,
        metrics: ServerMetrics,
        *,
        allow_new_labels: bool = False,
        stream_window: int = 64,
    ):
        self.models = models
        self.feedback = feedback
        self.recent = recent
        self.metrics = metrics
        self.allow_new_labels = allow_new_labels
        self.stream_window = stream_window

    # -- RPCs -------------------------------------------------------------------------------

    def Classify(self, request: pb.ClassifyRequest, context: grpc.ServicerContext) -> pb.ClassifyResponse:
        started = time.perf_counter()
        with _Outcome(self.metrics, "Classify", context, started):
            deadline = _deadline(context)
            submitted = self._submit(request, deadline, started)
            if submitted.error is not None:
                raise submitted.error
            return self._answer(submitted, deadline)

    def ClassifyStream(self, request_iterator, context: grpc.ServicerContext):
        deadline = _deadline(context)
        pending: queue.SimpleQueue[_Submitted | None] = queue.SimpleQueue()
        window = threading.Semaphore(self.stream_window)  # how far the reader may run ahead
        reader = threading.Thread(
            target=self._read_stream,
            args=(request_iterator, context, deadline, pending, window),
            name="stream-reader",
            daemon=True,
        )
        reader.start()
        while (submitted := pending.get()) is not None:
            try:
                if submitted.error is not None:
                    raise submitted.error
                response = self._answer(submitted, deadline)
                code = "OK"
            except RequestError as err:
                response = pb.ClassifyResponse(
                    request_id=submitted.request_id, error=pb.ItemError(code=err.code.value[0], message=err.message)
                )
                code = err.code.name
            window.release()
            self.metrics.observe("ClassifyStream", code, time.perf_counter() - submitted.started)
            yield response

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        with _Outcome(self.metrics, "ListModels", context, time.perf_counter()):
            return pb.ListModelsResponse(models=[self._model_info(h, i == 0) for i, h in enumerate(self.models)])

    def SubmitFeedback(
        self, request: pb.SubmitFeedbackRequest, context: grpc.ServicerContext
    ) -> pb.SubmitFeedbackResponse:
        with _Outcome(self.metrics, "SubmitFeedback", context, time.perf_counter()):
            return self._store_feedback(request)

    # -- classification ---------------------------------------------------------------------

    def _submit(self, request: pb.ClassifyRequest, deadline: float | None, started: float) -> _Submitted:
        # request.image is read once: each read of a protobuf bytes field is a copy
        submitted = _Submitted(request.request_id or uuid.uuid4().hex, request.image, started, heatmap=request.heatmap)
        try:
            if request.request_id:
                _check(check_request_id, request.request_id)
            submitted.hosted = self._select(request.model)
            if deadline is not None and time.monotonic() >= deadline:
                raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the image was decoded")
            submitted.future = submitted.hosted.classify(submitted.image, deadline)
        except RequestError as err:
            submitted.error = err
        except ImageDecodeError as exc:
            submitted.error = RequestError(grpc.StatusCode.INVALID_ARGUMENT, _decode_reason(exc))
        except QueueFullError as exc:
            submitted.error = RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except (BatcherStoppedError, ModelUnavailableError) as exc:
            submitted.error = RequestError(grpc.StatusCode.UNAVAILABLE, str(exc))
        return submitted

    def _answer(self, submitted: _Submitted, deadline: float | None) -> pb.ClassifyResponse:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            result: BatchResult = submitted.future.result(timeout)
        except (FutureTimeout, DeadlineExpiredError):
            raise RequestError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the image was classified"
            ) from None
        except Exception as exc:
            raise RequestError(grpc.StatusCode.INTERNAL, f"inference failed: {exc}") from exc
        model, probabilities = result.model, result.probabilities
        order = np.argsort(-probabilities, kind="stable")
        labels = model.labels
        top = float(probabilities[order[0]])
        threshold = submitted.hosted.reject_threshold(model)
        label = labels[order[0]]
        self.recent.put(
            submitted.request_id, RecentRequests.Entry(submitted.image, submitted.hosted.name, model.version, label)
        )
        heatmap = _heatmap(model, submitted.image) if submitted.heatmap and getattr(model, "has_heatmap", False) else None
        return pb.ClassifyResponse(
            heatmap=heatmap,
            label=label,
            scores=[pb.ClassScore(label=labels[i], probability=float(probabilities[i])) for i in order],
            needs_review=top < threshold,
            model_name=model.name,
            model_version=model.version,
            request_id=submitted.request_id,
            top_probability=top,
            reject_threshold=threshold,
            batch_size=result.batch_size,
            server_latency_ms=(time.perf_counter() - submitted.started) * 1000.0,
        )

    def _read_stream(self, request_iterator, context, deadline, pending, window) -> None:
        """Decode and queue a stream's requests while earlier ones run (the response side waits)."""
        try:
            for request in request_iterator:
                while not window.acquire(timeout=0.5):
                    if not context.is_active():
                        return
                pending.put(self._submit(request, deadline, time.perf_counter()))
        except Exception as exc:  # the client went away or cancelled: end quietly
            logger.debug("stream ended by the client: %s", exc)
        finally:
            pending.put(None)

    def _select(self, selector: str) -> HostedModel:
        if not selector:
            return self.models[0]
        for hosted in self.models:
            if selector in (hosted.name, hosted.source.uri):
                return hosted
        names = ", ".join(h.name or h.source.uri for h in self.models)
        raise RequestError(grpc.StatusCode.NOT_FOUND, f"unknown model {selector!r}; this server serves: {names}")

    # -- other RPCs -------------------------------------------------------------------------

    def _model_info(self, hosted: HostedModel, is_default: bool) -> pb.ModelInfo:
        info = pb.ModelInfo(name=hosted.name, source_uri=hosted.source.uri, is_default=is_default)
        model = hosted.current
        if model is None:
            return info
        meta = model.metadata
        info.loaded = True
        info.version = model.version
        info.labels.extend(meta.labels)
        info.image_size = meta.image_size
        info.resize_mode = str(meta.resize_mode)
        info.reject_threshold = hosted.reject_threshold(model)
        info.method, info.backbone = meta.method, meta.backbone
        info.heatmap = bool(getattr(model, "has_heatmap", False))
        info.loaded_at.CopyFrom(_timestamp(model.loaded_at))
        return info

    def _store_feedback(self, request: pb.SubmitFeedbackRequest) -> pb.SubmitFeedbackResponse:
        _check(check_request_id, request.request_id)
        _check(check_label, request.label)
        recent = self.recent.get(request.request_id)
        image = request.image or (recent.image if recent else b"")
        if not image:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"no image for request id {request.request_id!r}: the server no longer keeps it; send it in `image`",
            )
        hosted = self._select(request.model or (recent.model if recent else ""))
        model = hosted.current
        if not self.allow_new_labels:
            if model is None:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "no model loaded to check the label against")
            if request.label not in model.labels:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"unknown label {request.label!r}; the model's labels are {', '.join(model.labels)}",
                )
        try:
            stored = self.feedback.save(
                request.request_id,
                request.label,
                image,
                model_name=hosted.name,
                model_version=recent.model_version if recent else (model.version if model else ""),
                predicted=recent.predicted if recent else "",
                note=request.note,
            )
        except ImageDecodeError as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, _decode_reason(exc)) from exc
        except OSError as exc:
            logger.error("cannot store feedback for %s: %s", request.request_id, exc)
            raise RequestError(grpc.StatusCode.INTERNAL, f"cannot store feedback: {exc.strerror or exc}") from exc
        if not stored.duplicate:
            self.metrics.feedback.labels(request.label).inc()
            log_event(
                logger,
                "feedback_stored",
                request_id=request.request_id,
                label=request.label,
                predicted=recent.predicted if recent else "",
                path=stored.path,
            )
        return pb.SubmitFeedbackResponse(
            stored_path=stored.path, predicted=recent.predicted if recent else "", duplicate=stored.duplicate
        )


class _Outcome:
    """Times a unary RPC, records its status in the metrics, and turns errors into aborts."""

    def __init__(self, metrics: ServerMetrics, method: str, context: grpc.ServicerContext, started: float):
        self.metrics, self.method, self.context, self.started = metrics, method, context, started

    def __enter__(self) -> _Outcome:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            code, error = "OK", None
        elif isinstance(exc, RequestError):
            code, error = exc.code, exc.message
        else:
            logger.exception("%s failed unexpectedly", self.method, exc_info=exc)
            code, error = grpc.StatusCode.INTERNAL, "internal error (see the server log)"
        self.metrics.observe(
            self.method, code if isinstance(code, str) else code.name, time.perf_counter() - self.started
        )
        if error is not None:
            logger.debug("%s -> %s: %s", self.method, code.name, error)
            self.context.abort(code, error)  # raises
        return False


def _check(validator, value: str) -> None:
    try:
        validator(value)
    except ValueError as exc:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


def _heatmap(model, image: bytes) -> pb.Heatmap:
    """The anomaly map of one image (a second, unbatched run: only requests that ask pay for it)."""
    from services.heatmap import heatmap_message

    try:
        pixels = model.preprocess(image)
        _, grid = model.predict_with_heatmap(pixels[None])
    except Exception as exc:  # onnxruntime raises its own types
        raise RequestError(grpc.StatusCode.INTERNAL, f"heatmap failed: {exc}") from exc
    return heatmap_message(pixels, grid[0], model.metadata.anomaly_threshold)


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The call's deadline as a ``time.monotonic()`` value (None: no deadline)."""
    remaining = context.time_remaining()  # grpc reports "no deadline" as one far in the future
    return None if remaining is None or remaining > _NO_DEADLINE_S else time.monotonic() + remaining


def _decode_reason(exc: ImageDecodeError) -> str:
    if isinstance(exc.__cause__, UnidentifiedImageError):
        return "not an image (expected an encoded PNG, JPEG, BMP or TIFF)"
    text = str(exc).strip()
    return text.splitlines()[0] if text else "cannot decode image"


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
