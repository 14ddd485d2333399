"""A model the server hosts: its source, the loaded version, its batcher and its reload watcher.

Hot reload: a watcher thread polls the source every ``reload_interval`` seconds; when the
token moves it loads and warms up the new version *beside* the old one, then swaps one
reference. Requests remember the version they were decoded for, so in-flight batches finish
on the old session and no request fails; the old session is freed when its last batch is done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from services.batching import BatchResult, DynamicBatcher
from services.logs import log_event
from services.model import ModelLoadError, OnnxClassifier, RuntimeConfig
from services.sources import ModelSource, SourceError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching of one hosted model."""

    max_batch_size: int = 32  # most images run through the model at once
    max_queue_delay_ms: float = 2.0  # longest wait for more requests once one is queued
    max_queue: int = 256  # requests waiting beyond this are refused (RESOURCE_EXHAUSTED)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")


class HostedModel:
    """One ``--model``: always answers with its current version; reloads in the background."""

    def __init__(
        self,
        source: ModelSource,
        *,
        runtime: RuntimeConfig = RuntimeConfig(),
        batching: BatchingConfig = BatchingConfig(),
        reject_threshold: float | None = None,
        on_batch: Callable[[str, int], None] | None = None,
        on_reload: Callable[[HostedModel, OnnxClassifier], None] | None = None,
    ):
        self.source = source
        self.runtime = runtime
        self.batching = batching
        self.threshold_override = reject_threshold
        self.name = source.name
        self.current: OnnxClassifier | None = None
        self._token: str | None = None
        self._on_reload = on_reload
        self._lock = threading.Lock()  # one load at a time
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.batcher = DynamicBatcher(
            max_batch_size=batching.max_batch_size,
            max_delay_s=batching.max_queue_delay_ms / 1000.0,
            max_queue=batching.max_queue,
            name=self.name or Path(source.uri).stem,
            on_batch=(lambda n: on_batch(self.name, n)) if on_batch else None,
        )

    def reject_threshold(self, model: OnnxClassifier) -> float:
        return self.threshold_override if self.threshold_override is not None else model.metadata.reject_threshold

    def refresh(self) -> bool:
        """Load the source's newest version if it changed; True when a new version went live.

        Raises ``SourceError`` / ``ModelLoadError`` when the new version can't be had; the
        current version keeps serving and the next refresh tries again.
        """
        with self._lock:
            token = self.source.poll()
            if token == self._token:
                return False
            artifact = self.source.fetch(token)
            started = time.perf_counter()
            try:
                model = OnnxClassifier(artifact.path, self.runtime, name=artifact.name, version=artifact.version)
                model.warm_up(tuple(sorted({1, self.batching.max_batch_size})))
            finally:
                artifact.discard()
            previous, self.current, self._token = self.current, model, token
            if not self.name:
                self.name = model.name
        log_event(
            logger,
            "model_loaded" if previous is None else "model_reloaded",
            model=self.name,
            version=model.version,
            previous=previous.version if previous else "",
            source=self.source.uri,
            labels=",".join(model.labels),
            providers=",".join(model.providers),
            load_s=round(time.perf_counter() - started, 3),
        )
        if self._on_reload is not None:
            self._on_reload(self, model)
        return True

    def start_watching(self, interval_s: float) -> None:
        """Poll the source every ``interval_s`` seconds in a daemon thread (if it can change)."""
        if interval_s <= 0 or not self.source.watchable or self._watcher is not None:
            return
        self._watcher = threading.Thread(
            target=self._watch, args=(interval_s,), name=f"reload-{self.name}", daemon=True
        )
        self._watcher.start()

    def _watch(self, interval_s: float) -> None:
        failing = ""
        while not self._stop.wait(interval_s):
            try:
                self.refresh()
                failing = ""
            except (SourceError, ModelLoadError, OSError) as exc:
                if str(exc) != failing:  # log each distinct failure once, not every poll
                    failing = str(exc)
                    log_event(
                        logger,
                        "reload_failed",
                        level=logging.WARNING,
                        model=self.name,
                        error=failing,
                        serving=self.current.version if self.current else "nothing",
                    )
            except Exception:
                logger.exception("unexpected error while reloading %s", self.source.uri)

    def classify(self, image: bytes, deadline: float | None) -> Future[BatchResult]:
        """Decode ``image`` for the current version (in the caller's thread) and queue it.

        Raises ``ImageDecodeError``, ``QueueFullError``, ``BatcherStoppedError``, or
        ``ModelUnavailableError`` when no version is loaded yet.
        """
        with self.batcher.arrival() as arrival:
            model = self.current
            if model is None:
                raise ModelUnavailableError(f"model {self.name or self.source.uri} is not loaded yet")
            pixels = model.preprocess(image)
            return arrival.submit(model, pixels, deadline)

    def stop(self) -> None:
        """Stop watching, then run what is queued and stop the batcher."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.batcher.stop(timeout=30)


class ModelUnavailableError(RuntimeError):
    """The hosted model has no loaded version (yet)."""
