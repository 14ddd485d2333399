"""The in-process limit: ONNX Runtime on the same model file and threads, no server, no transport.

The model is loaded with ``services.model.OnnxClassifier``, i.e. with the session options and
the preprocessing (``adapt.contract.imageio.bytes_to_model_pixels``) the server uses. Each measurement
is made with three settings of ONNX Runtime's spin-waiting (``SPINNING``), the one session
option that matters when decode threads share the cores with ORT's threads (the server's own
setting is one of them, see ``server_spinning``). The limit is the best; all are reported. Settings are
measured one after the other, not interleaved: a pool still spinning after its run would slow
the next setting down.

- (a1) ``ort_only``: ORT on pixels decoded beforehand, swept over batch sizes.
- (a2) ``pipeline``: decode + resize + ORT, like the server does per request, with the best
  in-process parallelism found: a thread pool decodes the next batches while ORT runs the
  current one, swept over batch sizes and decode threads. The like-for-like limit.
- ``single_image``: one image at a time, decode + ORT (and ORT alone), for the latency target.

Every rate comes with the process's CPU time per image (ORT's threads included).
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.model import OnnxClassifier, RuntimeConfig

# ONNX Runtime's thread-pool spin-waiting: session config entries of each setting.
SPINNING = {
    "spin": {"session.intra_op.allow_spinning": "1"},  # ORT's default: idle threads spin-wait, also after a run
    "spinstop": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"},  # only during a run
    "nospin": {"session.intra_op.allow_spinning": "0"},  # never; idle threads sleep at once
}


def load(path: Path, threads: int, spinning: str) -> OnnxClassifier:
    """The server's model object (its preprocessing, its session options), with ``spinning`` set."""
    ort.set_default_logger_severity(3)  # overwriting the server's spinning entry is intended, not a warning
    model = OnnxClassifier(path, RuntimeConfig(intra_op_threads=threads))
    options = model.session.get_session_options()
    for key, value in SPINNING[spinning].items():
        options.add_session_config_entry(key, value)
    model.session = ort.InferenceSession(str(path), options, providers=list(model.providers))
    return model


def server_spinning(path: Path, threads: int) -> str:
    """Which of ``SPINNING`` the server's own session (``services.model.OnnxClassifier``) uses."""
    options = OnnxClassifier(path, RuntimeConfig(intra_op_threads=threads)).session.get_session_options()

    def entry(key: str, default: str) -> str:
        try:
            return options.get_session_config_entry(key)
        except Exception:  # ORT raises when the key was never set: its default applies
            return default

    if entry("session.intra_op.allow_spinning", "1") == "0":
        return "nospin"
    return "spinstop" if entry("session.force_spinning_stop", "0") == "1" else "spin"


def _rate(run_batch, batch: int, seconds: float) -> dict:
    run_batch(batch)  # warm up this shape
    done, cpu0, start = 0, time.process_time(), time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        run_batch(batch)
        done += batch
    return {"images_per_s": done / elapsed, "cpu_ms_per_image": (time.process_time() - cpu0) * 1000 / done}


def _best(rates: dict[str, dict]) -> dict:
    best = max(rates, key=lambda k: rates[k]["images_per_s"])
    return {**rates[best], "best_config": best, "by_config": rates}


def ort_only(models: dict[str, OnnxClassifier], images: list[bytes], batches: list[int], seconds: float) -> dict:
    """Images/s of ``model.predict`` on pre-decoded pixels, per batch size and spinning setting."""
    pixels = np.stack([next(iter(models.values())).preprocess(img) for img in images])
    cursor = [0]
    rates = {}
    for spin, model in models.items():  # one setting at a time: a spinning pool would slow the others
        for n in batches:

            def run_batch(n: int, model=model) -> None:
                start = cursor[0] % (len(pixels) - n + 1)
                model.predict(pixels[start : start + n])
                cursor[0] += n

            rates[f"batch={n},{spin}"] = _rate(run_batch, n, seconds)
    return _best(rates)


def pipeline(
    models: dict[str, OnnxClassifier],
    images: list[bytes],
    batches: list[int],
    decode_threads: list[int],
    seconds: float,
) -> dict:
    """Images/s of decode (thread pool, two batches ahead) + batched ORT, per configuration."""
    rates = {}
    for spin, model in models.items():
        for threads in decode_threads:
            with ThreadPoolExecutor(threads) as pool:
                for n in batches:
                    rates[f"batch={n},decode_threads={threads},{spin}"] = _pipeline_rate(
                        model, images, pool, n, seconds
                    )
    return _best(rates)


def _pipeline_rate(
    model: OnnxClassifier, images: list[bytes], pool: ThreadPoolExecutor, n: int, seconds: float
) -> dict:
    cursor = 0
    ahead: deque[list] = deque()

    def submit() -> None:
        nonlocal cursor
        ahead.append([pool.submit(model.preprocess, images[(cursor + j) % len(images)]) for j in range(n)])
        cursor += n

    def run_batch(n: int) -> None:
        while len(ahead) < 3:
            submit()
        pixels = np.stack([f.result() for f in ahead.popleft()])
        submit()  # keep two batches decoding while ORT runs this one
        model.predict(pixels)

    rate = _rate(run_batch, n, seconds)
    for futures in ahead:  # drain before the next configuration
        for f in futures:
            f.result()
    return rate


def single_image(models: dict[str, OnnxClassifier], images: list[bytes], count: int) -> dict:
    """One image at a time: decode + ORT (what a lone request needs) and ORT alone; best p50 wins."""
    by_config = {}
    for spin, model in models.items():  # one setting at a time: a spinning pool would slow the others
        full, ort_ms = [], []
        for i in range(count + 5):
            if i == 5:  # the first few warm caches up
                cpu0 = time.process_time()
            start = time.perf_counter()
            pixels = model.preprocess(images[i % len(images)])[None]
            decoded = time.perf_counter()
            model.predict(pixels)
            end = time.perf_counter()
            if i >= 5:
                full.append((end - start) * 1000)
                ort_ms.append((end - decoded) * 1000)
        by_config[spin] = {
            "p50_ms": float(np.percentile(full, 50)),
            "p99_ms": float(np.percentile(full, 99)),
            "ort_p50_ms": float(np.percentile(ort_ms, 50)),
            "ort_p99_ms": float(np.percentile(ort_ms, 99)),
            "images_per_s": float(1000.0 / np.mean(full)),
            "cpu_ms_per_image": (time.process_time() - cpu0) * 1000 / count,
        }
    best = min(by_config, key=lambda k: by_config[k]["p50_ms"])
    return {**by_config[best], "best_config": best, "by_config": by_config, "count": count}
