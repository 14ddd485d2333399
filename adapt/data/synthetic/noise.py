"""Numeric primitives of the generator: value noise, masks, blending, resampling, drawn strokes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw


@lru_cache(maxsize=32)
def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1]: x as a (1, size) row, y as a (size, 1) column."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = c[None, :].copy(), c[:, None].copy()
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@lru_cache(maxsize=256)
def _interp_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth (Gaussian-kernel) up-sampling from n_in lattice values to n_out pixels as 4 taps:
    indices and weights, each (4, n_out), scaled so that interpolated unit-variance white noise
    has unit variance again. Gathers instead of a matrix product: no BLAS threads to fight over."""
    pos = (np.arange(n_out) + 0.5) / n_out * n_in - 0.5
    idx = np.floor(pos).astype(np.int64)[None, :] + np.arange(-1, 3)[:, None]
    w = np.exp(-0.5 * ((pos[None, :] - idx) / 0.6) ** 2)
    w /= w.sum(axis=0, keepdims=True)
    w *= 1.0 / math.sqrt(float(np.mean(np.sum(w**2, axis=0))))
    idx = np.clip(idx, 0, n_in - 1)
    w = w.astype(np.float32)
    for a in (idx, w):
        a.setflags(write=False)
    return idx, w


def _noise(rng: np.random.Generator, size: int, ky: int, kx: int | None = None) -> np.ndarray:
    """Smooth value noise (about zero mean, unit std) with ky x kx lattice cells; ky != kx streaks."""
    ky = max(2, min(int(ky), size))
    kx = ky if kx is None else max(2, min(int(kx), size))
    lattice = rng.standard_normal((ky, kx), dtype=np.float32)
    iy, wy = _interp_taps(size, ky)
    ix, wx = _interp_taps(size, kx)
    rows = sum(wy[t][:, None] * lattice[iy[t]] for t in range(4))
    return sum(rows[:, ix[t]] * wx[t][None, :] for t in range(4))


def _fractal(rng: np.random.Generator, size: int, base: int, octaves: int, gain: float = 0.5) -> np.ndarray:
    """Sum of value-noise octaves (cells base, 2 base, 4 base, ...), about unit std."""
    out = np.zeros((size, size), np.float32)
    total = 0.0
    for o in range(octaves):
        amp = gain**o
        out += amp * _noise(rng, size, base * 2**o)
        total += amp * amp
    return out / math.sqrt(total)


def _rotated(make: Callable[[int], np.ndarray], size: int, degrees: float) -> np.ndarray:
    """Render make(n) on a larger canvas, rotate it and crop the centre size x size."""
    if degrees % 180 == 0:
        return make(size)
    if degrees % 180 == 90:
        return make(size).T.copy()
    n = int(math.ceil(size * 1.415)) + 2
    img = Image.fromarray(make(n)).rotate(degrees, resample=Image.BILINEAR)
    o = (n - size) // 2
    return np.asarray(img.crop((o, o, o + size, o + size)), dtype=np.float32)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gray(v: np.ndarray) -> np.ndarray:
    return np.repeat(v[:, :, None], 3, axis=2)


def _paint(v: np.ndarray, colour: Sequence[float]) -> np.ndarray:
    """Shade a (size, size) value map with an RGB colour whose mean is the value's scale."""
    c = np.asarray(colour, np.float32)
    return v[:, :, None] * (c / c.mean())


def _blend(rgb: np.ndarray, target: np.ndarray | Sequence[float], m: np.ndarray) -> np.ndarray:
    """rgb where m == 0, target where m == 1 (m is (size, size) in [0, 1])."""
    t = np.asarray(target, np.float32)
    return rgb + m[:, :, None] * (t - rgb)


def _remap(img: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """Bilinear resampling of img (H, W, C) at unit coordinates (sx, sy)."""
    h, w = img.shape[:2]
    px = np.clip(sx * w - 0.5, 0, w - 1.001)
    py = np.clip(sy * h - 0.5, 0, h - 1.001)
    x0 = px.astype(np.int32)
    y0 = py.astype(np.int32)
    fx = (px - x0)[:, :, None]
    fy = (py - y0)[:, :, None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


class _Strokes:
    """Anti-aliased drawing (super-sampled Pillow) in unit coordinates into a [0, 1] mask."""

    def __init__(self, size: int):
        self.size = size
        self.ss = 4 if size <= 64 else 2
        self.scale = size * self.ss
        self.img = Image.new("L", (self.scale, self.scale), 0)
        self.draw = ImageDraw.Draw(self.img)

    def _xy(self, pts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        s = self.scale
        return [(float(px) * s, float(py) * s) for px, py in pts]

    def line(self, pts: Sequence[tuple[float, float]], width_px: float, value: int = 255) -> None:
        self.draw.line(self._xy(pts), fill=value, width=max(1, round(width_px * self.ss)), joint="curve")

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, value: int = 255) -> None:
        s = self.scale
        self.draw.ellipse((float(cx - rx) * s, float(cy - ry) * s, float(cx + rx) * s, float(cy + ry) * s), fill=value)

    def polygon(self, pts: Sequence[tuple[float, float]], value: int = 255) -> None:
        self.draw.polygon(self._xy(pts), fill=value)

    def rect(self, x0: float, y0: float, x1: float, y1: float, value: int = 255) -> None:
        s = self.scale
        a, b = float(x0) * s, float(y0) * s
        self.draw.rectangle((a, b, max(a, float(x1) * s - 1), max(b, float(y1) * s - 1)), fill=value)

    def mask(self) -> np.ndarray:
        img = self.img.reduce(self.ss) if self.ss > 1 else self.img
        return np.asarray(img, dtype=np.float32) * (1.0 / 255.0)
