"""Images of an ``ImageSet`` as model pixels, batch by batch, decoded in a small thread pool.

PIL releases the GIL while it decodes and resizes, so a few threads decoding the next batches
keep ONNX Runtime busy with the current one (the service decodes its requests the same way, in
its RPC threads). Feature extraction (``adapt.core.features``) and evaluation
(``adapt.core.predict``) read their images through ``pixel_batches``.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from adapt.contract.imageio import ImageDecodeError, to_model_pixels
from adapt.data.images import ImageSet
from adapt.errors import DataError

DECODE_WORKERS = min(4, os.cpu_count() or 1)
BATCHES_AHEAD = 2  # batches being decoded while the consumer works on one


def model_pixels(images: ImageSet, i: int, image_size: int, resize_mode: str = "shortest") -> np.ndarray:
    """Image ``i`` as uint8 ``[H, W, 3]`` at the model's input size; ``DataError`` when it does not decode."""
    try:
        img = images.load(i)
    except ImageDecodeError as exc:
        raise DataError(str(exc)) from exc
    return to_model_pixels(img, image_size, resize_mode)


def pixel_batches(
    images: ImageSet, image_size: int, resize_mode: str = "shortest", batch_size: int = 64, workers: int = DECODE_WORKERS
) -> Iterator[np.ndarray]:
    """uint8 ``[n, H, W, 3]`` batches of ``images`` in order, ``BATCHES_AHEAD`` batches decoded ahead
    by ``workers`` threads. Stopping early cancels the decoding not yet started."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = iter(range(0, len(images), batch_size))
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode")

    def submit(start: int) -> list:
        stop = min(start + batch_size, len(images))
        return [pool.submit(model_pixels, images, i, image_size, resize_mode) for i in range(start, stop)]

    try:
        pending = deque(submit(s) for _, s in zip(range(BATCHES_AHEAD), starts))
        while pending:
            batch = pending.popleft()
            following = next(starts, None)
            if following is not None:
                pending.append(submit(following))
            yield np.stack([f.result() for f in batch])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def with_progress(batches: Iterator[np.ndarray], n: int, batch_size: int, desc: str, progress: bool = True):
    """``batches`` of ``n`` images behind a tqdm bar counting batches (none when ``progress`` is off)."""
    return tqdm(batches, total=math.ceil(n / batch_size), desc=desc, disable=not progress, leave=False, unit="batch")
