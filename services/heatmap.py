"""Heatmaps for anomaly models: the model's ``anomaly_map`` grid as a protobuf message and an overlay PNG.

Only numpy and Pillow (no torch): the grid is upsampled bilinearly to the model's input view and
blended over it in colour, scaled so that the decision threshold sits in the middle of the
colour ramp (blue = half the threshold or less, like the good parts; red = 1.5x the threshold or more).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from services.proto import inspection_pb2 as pb

OVERLAY_ALPHA = 0.5


def colour_ramp(v: np.ndarray) -> np.ndarray:
    """``v`` in [0, 1] -> uint8 RGB, blue -> cyan -> yellow -> red."""
    r = np.clip(2.0 * v - 0.5, 0, 1)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0, 1)
    b = np.clip(1.5 - 2.0 * v, 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def overlay_png(pixels: np.ndarray, grid: np.ndarray, threshold: float) -> bytes:
    """``pixels`` uint8[H, W, 3] (the model's input view) with ``grid`` float[h, w] overlaid, as PNG bytes."""
    h, w = pixels.shape[:2]
    t = threshold if threshold > 0 else (float(grid.max()) or 1.0) / 1.5
    up = np.asarray(Image.fromarray(grid.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR))
    heat = colour_ramp(np.clip((up - 0.5 * t) / t, 0.0, 1.0)).astype(np.float32)
    blended = (1 - OVERLAY_ALPHA) * pixels.astype(np.float32) + OVERLAY_ALPHA * heat
    buf = io.BytesIO()
    Image.fromarray(blended.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def heatmap_message(pixels: np.ndarray, grid: np.ndarray, threshold: float) -> pb.Heatmap:
    grid = np.asarray(grid, dtype=np.float32)
    return pb.Heatmap(
        width=int(grid.shape[1]),
        height=int(grid.shape[0]),
        values=grid.ravel().tolist(),
        threshold=float(threshold),
        overlay_png=overlay_png(pixels, grid, threshold),
    )
