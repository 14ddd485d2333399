"""Procedural industrial surfaces with defects and captions: the ``synthetic`` data source.

Every image is drawn from a seed and an index alone (``render_sample(seed, index)``), with NumPy
and Pillow only, fast enough to generate on the fly in data-loader workers. It serves three uses:

- image-caption pairs to pretrain a small CLIP backbone from scratch (captions name the surface,
  the defect with synonyms, where it is and how bad it is, or say that the part is good);
- the labelled ``--data synthetic[:classes][@SIZE]`` source for demos and tests (``synthetic_source``);
- features that transfer to real inspection images, in particular electroluminescence (EL)
  images of solar cells as in ELPV: grayscale cells with busbars and fingers, thin dark cracks,
  dark inactive areas, finger interruptions, grainy poly-crystalline vs uniform mono cells.

A sample is rendered from independent random streams (choice, background, defect, camera,
caption) spawned from ``(seed, index)``, so the good and the defective render of one
``(seed, index, surface)`` share background and camera and differ only where the defect is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SURFACES: tuple[str, ...] = (
    "brushed_metal",
    "cast_metal",
    "textile",
    "wood",
    "ceramic_tile",
    "pcb",
    "wafer",
    "solar_mono",
    "solar_poly",
    "painted_plastic",
    "concrete",
    "leather",
)
DEFECTS: tuple[str, ...] = (
    "scratch",
    "crack",
    "hole",
    "spot",
    "contamination",
    "missing_part",
    "bent",
    "inactive",
)
GOOD = "none"
GOOD_ALIASES = frozenset({GOOD, "good", "ok", "normal", "functional"})
SEVERITIES: tuple[str, ...] = ("subtle", "moderate", "severe")
LOCATIONS: tuple[str, ...] = (
    "top-left", "top", "top-right", "left", "centre", "right", "bottom-left", "bottom", "bottom-right",
)
EL_SURFACES = frozenset({"solar_mono", "solar_poly"})  # rendered as electroluminescence images
MIN_SIZE, MAX_SIZE = 16, 2048
_STREAMS = 5  # choice, background, defect, camera, caption


@dataclass(frozen=True)
class SyntheticSample:
    """One rendered image with its ground truth and caption."""

    image: Image.Image  # RGB, size x size
    surface: str  # one of SURFACES
    defect: str  # one of DEFECTS or GOOD
    severity: str  # "subtle" | "moderate" | "severe"; "" for good
    location: str  # one of LOCATIONS; "" for good
    caption: str
    mask: Image.Image | None = field(default=None, compare=False, repr=False)  # "L" defect region; None for good


# --------------------------------------------------------------------------------------------
# Numeric helpers
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Surfaces
# --------------------------------------------------------------------------------------------


@dataclass
class _Surface:
    """A rendered good surface plus what the defects need to know about its structure."""

    rgb: np.ndarray  # (size, size, 3) float32, about [0, 1]
    under: np.ndarray | tuple[float, float, float]  # what a missing part reveals
    parts: list[tuple[float, float, float, float]] = field(default_factory=list)  # unit boxes
    part_mask: np.ndarray | None = None  # where the parts are (PCB pads); None: chip the box
    angle: float = 0.0  # direction of a periodic structure (threads), radians
    period: float = 0.0  # its period in unit coordinates; 0 if none
    el: bool = False  # electroluminescence image: grayscale, defects are dark
    busbars: tuple[float, ...] = ()  # solar: busbar centres (unit y, canonical frame)
    transposed: bool = False  # solar: rendered with busbars horizontal, then transposed


_METALS = {
    "steel": (0.80, 0.82, 0.85), "aluminium": (0.88, 0.88, 0.90), "dark steel": (0.60, 0.62, 0.66),
    "titanium": (0.74, 0.73, 0.76), "brass": (0.86, 0.74, 0.46), "copper": (0.84, 0.58, 0.44),
}
_METAL_P = (0.3, 0.25, 0.15, 0.12, 0.1, 0.08)


def _dark_under(rng: np.random.Generator) -> tuple[float, float, float]:
    v = rng.uniform(0.04, 0.16)
    return (v, v, v * 1.05)


def _brushed_metal(rng: np.random.Generator, size: int) -> _Surface:
    angle = float(rng.choice([0.0, 90.0, rng.uniform(0, 180)], p=[0.45, 0.35, 0.2]))
    fine_amp, mid_amp = rng.uniform(0.6, 1.0), rng.uniform(0.2, 0.6)

    def streaks(n: int) -> np.ndarray:
        return fine_amp * _noise(rng, n, n, 3) + mid_amp * _noise(rng, n, max(4, n // 6), 2)

    t = _rotated(streaks, size, angle)
    x, y = _coords(size)
    phi = math.radians(angle + 90) + rng.normal(0, 0.3)
    band = (x - 0.5) * math.cos(phi) + (y - 0.5) * math.sin(phi) - rng.uniform(-0.4, 0.4)
    sheen = rng.uniform(0.0, 0.22) * np.exp(-((band / rng.uniform(0.12, 0.4)) ** 2))
    v = rng.uniform(0.5, 0.75) + rng.uniform(0.025, 0.06) * t + sheen
    colour = list(_METALS.values())[rng.choice(len(_METALS), p=_METAL_P)]
    return _Surface(_paint(v, colour), _dark_under(rng))


def _cast_metal(rng: np.random.Generator, size: int) -> _Surface:
    rough = _fractal(rng, size, 4, 5 if size > 64 else 4, gain=0.6)
    pits = _smoothstep(2.0, 2.8, _noise(rng, size, size // 2))
    v = rng.uniform(0.32, 0.55) * (1 + rng.uniform(0.08, 0.16) * rough - rng.uniform(0.3, 0.5) * pits)
    tint = (1.0, 1.0, 1.0 + rng.uniform(-0.06, 0.06))
    return _Surface(_paint(v, tint), _dark_under(rng))


_FABRICS = ((0.75, 0.72, 0.65), (0.25, 0.3, 0.5), (0.5, 0.15, 0.15), (0.3, 0.45, 0.3),
            (0.85, 0.85, 0.85), (0.2, 0.2, 0.22), (0.7, 0.55, 0.3), (0.45, 0.5, 0.6))


def _textile(rng: np.random.Generator, size: int) -> _Surface:
    threads = min(rng.uniform(9, 24), size / 3.2)
    angle = float(rng.normal(0, 0.04) if rng.random() < 0.85 else math.pi / 4)
    x, y = _coords(size)
    u = (x * math.cos(angle) + y * math.sin(angle)) * threads
    w = (-x * math.sin(angle) + y * math.cos(angle)) * threads
    iu, iw = np.floor(u), np.floor(w)
    fu, fw = u - iu, w - iw
    iu, iw = iu.astype(np.int64), iw.astype(np.int64)
    weave = rng.choice(3)
    if weave == 0:  # plain
        warp_over = (iu + iw) % 2 == 0
    elif weave == 1:  # 2/1 twill
        warp_over = (iu - iw) % 3 != 0
    else:  # basket
        warp_over = (iu // 2 + iw // 2) % 2 == 0
    gains = 1 + rng.uniform(0.03, 0.1) * rng.standard_normal((2, 64)).astype(np.float32)
    warp = np.maximum(np.sin(np.pi * fu), 0) ** 0.7 * gains[0][iu % 64]  # rounding can dip below 0
    weft = np.maximum(np.sin(np.pi * fw), 0) ** 0.7 * gains[1][iw % 64]
    c1 = np.asarray(_FABRICS[rng.choice(len(_FABRICS))], np.float32)
    c2 = np.asarray(_FABRICS[rng.choice(len(_FABRICS))], np.float32)
    if rng.random() < 0.7:  # weft dyed like the warp
        c2 = c1 * rng.uniform(0.8, 1.1)
    fibre = 1 + 0.05 * _noise(rng, size, size // 2)
    rgb = np.where(warp_over[:, :, None], warp[:, :, None] * c1, weft[:, :, None] * c2) * fibre[:, :, None]
    rgb = rgb * 0.85 + 0.1 * c1
    return _Surface(rgb.astype(np.float32), tuple(0.15 * c1), angle=angle, period=1.0 / threads)


_WOODS = (((0.88, 0.72, 0.52), (0.62, 0.42, 0.26)), ((0.72, 0.5, 0.32), (0.45, 0.28, 0.16)),
          ((0.55, 0.36, 0.22), (0.3, 0.18, 0.1)), ((0.9, 0.8, 0.64), (0.72, 0.58, 0.4)))


def _wood(rng: np.random.Generator, size: int) -> _Surface:
    """Flat-sawn board: growth rings as bands (gradual earlywood, sharp latewood), bowed into
    arches, wandering slowly, with fibre streaks along the grain."""
    x, y = _coords(size)
    wander = rng.uniform(0.02, 0.06) * _noise(rng, size, 3, 2) + rng.uniform(0.0, 0.006) * _noise(rng, size, 2, 8)
    arch = rng.uniform(-0.8, 0.8) * (x - rng.uniform(0.2, 0.8)) ** 2
    phase = (y + wander + arch + rng.uniform(-0.1, 0.1) * x) * rng.uniform(5, 16)
    f = phase - np.floor(phase)
    late = _smoothstep(0.45, 0.9, f) * (1 - _smoothstep(0.92, 1.0, f))
    fibre = _noise(rng, size, size, 6)
    light, dark = (np.asarray(c, np.float32) for c in _WOODS[rng.choice(len(_WOODS))])
    mix = np.clip(late * rng.uniform(0.45, 0.8) + 0.05 * fibre, 0, 1)
    rgb = light + mix[:, :, None] * (dark - light)
    rgb *= (1 + 0.04 * _noise(rng, size, size // 4))[:, :, None]
    if rng.random() < 0.5:
        rgb = rgb.transpose(1, 0, 2).copy()
    return _Surface(rgb, _dark_under(rng))


_GLAZES = ((0.93, 0.93, 0.9), (0.9, 0.86, 0.76), (0.35, 0.5, 0.7), (0.72, 0.4, 0.28),
           (0.6, 0.62, 0.62), (0.4, 0.6, 0.5), (0.2, 0.22, 0.25))


def _ceramic_tile(rng: np.random.Generator, size: int) -> _Surface:
    n = int(rng.integers(2, 6))
    grout = rng.uniform(0.05, 0.1)  # fraction of a tile
    ox, oy = rng.uniform(0, 1 / n, 2)
    x, y = _coords(size)
    tx, ty = (x - ox) * n, (y - oy) * n
    ix, iy = np.floor(tx), np.floor(ty)
    fx, fy = tx - ix, ty - iy
    edge_px = n / size
    edge_x = np.minimum(fx, 1 - fx)
    edge_y = np.minimum(fy, 1 - fy)
    on_tile = _smoothstep(grout / 2, grout / 2 + edge_px, edge_x) * _smoothstep(grout / 2, grout / 2 + edge_px, edge_y)
    bevel = 1 - 0.12 * (1 - _smoothstep(grout / 2, grout / 2 + 0.08, np.minimum(edge_x, edge_y)))
    gains = 1 + 0.04 * rng.standard_normal((8, 8)).astype(np.float32)
    tile_gain = gains[iy.astype(np.int64) % 8, ix.astype(np.int64) % 8]
    glaze = np.asarray(_GLAZES[rng.choice(len(_GLAZES))], np.float32)
    hx, hy = rng.uniform(0.2, 0.8, 2)
    gloss = rng.uniform(0.0, 0.15) * np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / rng.uniform(0.02, 0.1))
    tile = glaze * (tile_gain * bevel * (1 + 0.015 * _noise(rng, size, size // 3)))[:, :, None] + gloss[:, :, None]
    g = rng.uniform(0.45, 0.72)
    grout_rgb = _paint(g * (1 + 0.08 * _noise(rng, size, size // 2)), (1.0, 0.98, 0.94))
    rgb = grout_rgb + on_tile[:, :, None] * (tile - grout_rgb)
    cement = _paint(rng.uniform(0.35, 0.5) * (1 + 0.12 * _fractal(rng, size, 8, 2)), (1.0, 0.97, 0.92))
    return _Surface(rgb, cement, parts=_grid_boxes(n, ox, oy, grout))


_SOLDER_MASKS = ((0.08, 0.36, 0.16), (0.08, 0.2, 0.45), (0.07, 0.07, 0.08), (0.45, 0.08, 0.08), (0.28, 0.14, 0.38))


def _pcb(rng: np.random.Generator, size: int) -> _Surface:
    mask_c = np.asarray(_SOLDER_MASKS[rng.choice(len(_SOLDER_MASKS), p=[0.6, 0.15, 0.1, 0.08, 0.07])], np.float32)
    pad_c = (0.86, 0.7, 0.34) if rng.random() < 0.5 else (0.8, 0.8, 0.82)
    traces, pads, silk, holes = _Strokes(size), _Strokes(size), _Strokes(size), _Strokes(size)
    g = int(rng.integers(5, 10))  # routing grid
    step = 1.0 / g
    tw = rng.uniform(0.012, 0.028) * size
    parts: list[tuple[float, float, float, float]] = []

    def pad(cx: float, cy: float, hw: float, hh: float, round_: bool) -> None:
        (pads.ellipse if round_ else pads.rect)(*((cx, cy, hw, hh) if round_ else (cx - hw, cy - hh, cx + hw, cy + hh)))
        parts.append((cx - hw, cy - hh, cx + hw, cy + hh))

    for _ in range(int(rng.integers(4, 10))):  # Manhattan / 45-degree traces ending in pads
        px, py = (rng.integers(0, g + 1, 2) + 0.5) * step
        pts = [(px, py)]
        for _ in range(int(rng.integers(2, 5))):
            dx, dy = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)][rng.integers(8)]
            k = int(rng.integers(1, 4))
            px, py = px + dx * k * step, py + dy * k * step
            pts.append((px, py))
        traces.line(pts, tw)
        r = rng.uniform(0.6, 1.0) * step * 0.35
        pad(*pts[0], r, r, rng.random() < 0.5)
        pad(*pts[-1], r, r, rng.random() < 0.5)
    for _ in range(int(rng.integers(1, 4))):  # component footprints: pad pairs and pad rows
        cx, cy = rng.uniform(0.15, 0.85, 2)
        pw, ph = rng.uniform(0.02, 0.05), rng.uniform(0.03, 0.06)
        count = 2 if rng.random() < 0.5 else int(rng.integers(3, 7))
        pitch = pw * 2.6
        x0 = cx - pitch * (count - 1) / 2
        for k in range(count):
            pad(x0 + k * pitch, cy - ph * 1.6, pw, ph, False)
            if count > 2:
                pad(x0 + k * pitch, cy + ph * 1.6, pw, ph, False)
        silk.line([(x0 - pw * 2, cy - ph * 3), (x0 + pitch * (count - 1) + pw * 2, cy - ph * 3),
                   (x0 + pitch * (count - 1) + pw * 2, cy + ph * 3), (x0 - pw * 2, cy + ph * 3),
                   (x0 - pw * 2, cy - ph * 3)], max(0.8, 0.006 * size))
    for _ in range(int(rng.integers(2, 8))):  # vias
        cx, cy = rng.uniform(0.05, 0.95, 2)
        r = rng.uniform(0.012, 0.022)
        pads.ellipse(cx, cy, r, r)
        holes.ellipse(cx, cy, r * 0.45, r * 0.45)
    board = mask_c * (1 + 0.06 * _noise(rng, size, size // 3) + 0.04 * _noise(rng, size, size // 2, 4))[:, :, None]
    rgb = _blend(board, np.minimum(mask_c * 1.5 + 0.04, 1), traces.mask())
    rgb = _blend(rgb, (0.92, 0.92, 0.9), silk.mask() * 0.9)
    under = rgb.copy()
    pad_m = pads.mask()
    metal = _paint(0.8 * (1 + 0.05 * _noise(rng, size, size // 4)), pad_c)
    rgb = rgb + pad_m[:, :, None] * (metal - rgb)
    rgb = _blend(rgb, (0.05, 0.05, 0.05), holes.mask())
    parts = [p for p in parts if p[0] > 0 and p[1] > 0 and p[2] < 1 and p[3] < 1]
    return _Surface(rgb, under, parts=parts, part_mask=pad_m)


_WAFER_FILMS = ((0.5, 0.52, 0.62), (0.52, 0.42, 0.62), (0.7, 0.56, 0.42), (0.42, 0.56, 0.52), (0.6, 0.6, 0.62))


def _die_layout(rng: np.random.Generator, t: int = 48) -> np.ndarray:
    """One die's layout (t x t values in [0, 1]): functional blocks, a memory array, bond pads."""
    tpl = Image.new("L", (t, t), int(rng.integers(90, 140)))
    d = ImageDraw.Draw(tpl)
    for k in range(int(rng.integers(2, 6))):
        bx, by = sorted(rng.integers(5, t - 5, 2)), sorted(rng.integers(5, t - 5, 2))
        d.rectangle((bx[0], by[0], bx[1], by[1]), fill=int(rng.integers(30, 230)))
        if k == 0:  # memory array: fine stripes
            for yy in range(by[0], by[1], 2):
                d.line((bx[0], yy, bx[1], yy), fill=int(rng.integers(20, 60)))
    pitch = int(rng.integers(5, 9))
    for k in range(5, t - 6, pitch):  # bond pads along the edges
        for box in ((k, 1, k + 2, 3), (k, t - 4, k + 2, t - 2), (1, k, 3, k + 2), (t - 4, k, t - 2, k + 2)):
            d.rectangle(box, fill=245)
    return np.asarray(tpl, np.float32) / 255.0


def _grid_boxes(n: int, ox: float, oy: float, gap: float) -> list[tuple[float, float, float, float]]:
    """Unit boxes of the grid cells (period 1/n, offset ox/oy, gap as a cell fraction) inside the image."""
    half = gap / 2 / n
    boxes = []
    for j in range(-1, n + 1):
        for i in range(-1, n + 1):
            box = (ox + i / n + half, oy + j / n + half, ox + (i + 1) / n - half, oy + (j + 1) / n - half)
            if box[0] >= 0 and box[1] >= 0 and box[2] <= 1 and box[3] <= 1:
                boxes.append(box)
    return boxes


def _wafer(rng: np.random.Generator, size: int) -> _Surface:
    x, y = _coords(size)
    n = int(rng.integers(2, 7))
    street = rng.uniform(0.05, 0.1)
    ox, oy = rng.uniform(0, 1 / n, 2)
    tx, ty = (x - ox) * n, (y - oy) * n
    fx, fy = tx - np.floor(tx), ty - np.floor(ty)
    t = 48
    lut = _die_layout(rng, t)
    cx = np.clip((fx - street / 2) / (1 - street), 0, 0.999)
    cy = np.clip((fy - street / 2) / (1 - street), 0, 0.999)
    die = lut[(cy * t).astype(np.int64), (cx * t).astype(np.int64)]
    on_die = _smoothstep(street / 2, street / 2 + n / size, np.minimum(np.minimum(fx, 1 - fx), np.minimum(fy, 1 - fy)))
    film = np.stack([_noise(rng, size, 2) for _ in range(3)], axis=2) * rng.uniform(0.02, 0.06)
    base = np.asarray(_WAFER_FILMS[rng.choice(len(_WAFER_FILMS))], np.float32) * rng.uniform(0.85, 1.15) + film
    shade = on_die * (0.45 + 0.9 * die) + (1 - on_die) * rng.uniform(1.15, 1.35)
    rgb = base * shade[:, :, None]
    return _Surface(rgb.astype(np.float32), (0.12, 0.14, 0.2), parts=_grid_boxes(n, ox, oy, street))


def _cell_frame(rng: np.random.Generator, size: int, v: np.ndarray, chamfer: float
                ) -> tuple[np.ndarray, tuple[float, ...]]:
    """Busbars, fingers, dark border and (mono) cut corners of an EL cell image, busbars horizontal."""
    x, y = _coords(size)
    px = 1.0 / size
    nb = int(rng.choice([2, 3, 3, 3, 4, 5]))
    bars = tuple((k + 0.5) / nb for k in range(nb))
    width = rng.uniform(0.008, 0.022)
    bar = np.zeros_like(y)
    for b in bars:
        bar = np.maximum(bar, 1 - _smoothstep(width / 2, width / 2 + px, np.abs(y - b)))
    v = v * (1 - rng.uniform(0.3, 0.6) * bar)
    period = max(3.0 * px, rng.uniform(0.012, 0.025))
    fingers = (0.5 + 0.5 * np.cos(2 * np.pi * x / period)) ** 6
    v = v * (1 - rng.uniform(0.02, 0.07) * fingers)
    border = rng.uniform(0.0, 0.02)
    edge = np.minimum(np.minimum(x, 1 - x), np.minimum(y, 1 - y))
    v = v * (0.85 + 0.15 * _smoothstep(0.0, 0.08, edge))
    dark = rng.uniform(0.05, 0.18)
    inside = _smoothstep(border, border + px, edge)
    if chamfer > 0:
        corner = np.minimum(x, 1 - x) + np.minimum(y, 1 - y)
        inside = inside * _smoothstep(chamfer, chamfer + px, corner)
    return dark + inside * (v - dark), bars


def _solar_mono(rng: np.random.Generator, size: int) -> _Surface:
    x, y = _coords(size)
    v = rng.uniform(0.35, 0.7) * (1 + 0.06 * _fractal(rng, size, 2, 2) + 0.015 * _noise(rng, size, size // 2))
    if rng.random() < 0.4:  # faint concentric striation rings of a Czochralski ingot
        cx, cy = rng.uniform(-1, 2, 2)
        v = v * (1 + rng.uniform(0.01, 0.04) * np.sin(np.hypot(x - cx, y - cy) * rng.uniform(20, 60)))
    v, bars = _cell_frame(rng, size, v, rng.uniform(0.04, 0.1))
    return _el_surface(rng, v, bars)


def _grain_map(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """Per-pixel brightness of Voronoi crystal grains (domain-warped), about 1 +- a few percent."""
    g = min(size, 48)
    c = (np.arange(g, dtype=np.float32) + 0.5) / g
    seeds = rng.uniform(0, 1, (count, 2)).astype(np.float32)
    wx, wy = 0.04 * _noise(rng, g, 4), 0.04 * _noise(rng, g, 4)
    d2 = (c[None, :, None] + wx[:, :, None] - seeds[:, 0]) ** 2 + (c[:, None, None] + wy[:, :, None] - seeds[:, 1]) ** 2
    label = np.argmin(d2, axis=2)
    gains = 1 + rng.uniform(0.02, 0.07) * rng.standard_normal(count).astype(np.float32)
    pick = (np.arange(size) * g) // size
    return gains[label][pick][:, pick]


def _solar_poly(rng: np.random.Generator, size: int) -> _Surface:
    grains = _grain_map(rng, size, int(rng.integers(20, 60)))
    # Dislocation clusters: fine dark mottling, denser in some regions than others.
    mottle = 0.65 * _fractal(rng, size, 10, 3, gain=0.6) + 0.75 * _noise(rng, size, 3)
    t = rng.uniform(0.5, 1.3)
    dark = _smoothstep(t, t + 1.0, mottle) * rng.uniform(0.25, 0.5)
    ridge = 1 - np.abs(_fractal(rng, size, 4, 2))
    boundaries = _smoothstep(0.9, 0.985, ridge) * rng.uniform(0.05, 0.15)
    speck = _smoothstep(2.2, 3.0, _noise(rng, size, size // 2)) * 0.3
    v = rng.uniform(0.5, 0.8) * grains * (1 - dark - boundaries - speck) * (1 + 0.03 * _noise(rng, size, size // 3))
    v, bars = _cell_frame(rng, size, v, 0.0)
    return _el_surface(rng, v, bars)


def _el_surface(rng: np.random.Generator, v: np.ndarray, bars: tuple[float, ...]) -> _Surface:
    transposed = bool(rng.random() < 0.15)
    if transposed:
        v = v.T.copy()
    size = v.shape[0]
    return _Surface(_gray(v), _gray(v * 0.35), el=True, busbars=bars, transposed=transposed,
                    period=max(3.0 / size, 0.018), angle=0.0 if transposed else math.pi / 2)


_PAINTS = ((0.8, 0.12, 0.1), (0.12, 0.3, 0.7), (0.95, 0.8, 0.15), (0.92, 0.92, 0.9), (0.15, 0.15, 0.16),
           (0.55, 0.56, 0.58), (0.95, 0.5, 0.1), (0.2, 0.55, 0.3), (0.85, 0.85, 0.75))


def _painted_plastic(rng: np.random.Generator, size: int) -> _Surface:
    x, y = _coords(size)
    colour = np.asarray(_PAINTS[rng.choice(len(_PAINTS))], np.float32)
    peel = rng.uniform(0.01, 0.03) * _noise(rng, size, size // 3)
    hx, hy = rng.uniform(0.1, 0.9, 2)
    gloss = rng.uniform(0.0, 0.25) * np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / rng.uniform(0.01, 0.08))
    gloss *= 1.0 - 0.8 * float(colour.mean())  # white paint would clip
    shade = 1 + peel + 0.04 * _noise(rng, size, 2)
    rgb = colour * shade[:, :, None] + gloss[:, :, None]
    if rng.random() < 0.5:  # painted metal: chips show primer
        under = (0.6, 0.6, 0.58) if rng.random() < 0.5 else (0.72, 0.74, 0.77)
    else:
        under = _dark_under(rng)
    return _Surface(rgb, under)


def _concrete(rng: np.random.Generator, size: int) -> _Surface:
    base = rng.uniform(0.42, 0.7)
    rough = _fractal(rng, size, 4, 5 if size > 64 else 4, gain=0.55)
    agg = _smoothstep(0.8, 1.4, _noise(rng, size, max(4, size // 8))) * rng.uniform(-0.1, 0.1)
    pores = _smoothstep(2.7, 3.2, _noise(rng, size, size // 2)) * 0.25
    v = base * (1 + rng.uniform(0.05, 0.1) * rough + agg - pores)
    tint = (1.0, 1.0 - rng.uniform(-0.03, 0.04), 1.0 - rng.uniform(-0.03, 0.07))
    return _Surface(_paint(v, tint), _dark_under(rng))


_LEATHERS = ((0.45, 0.28, 0.16), (0.22, 0.2, 0.2), (0.7, 0.52, 0.34), (0.4, 0.12, 0.12), (0.55, 0.45, 0.38))


def _leather(rng: np.random.Generator, size: int) -> _Surface:
    creases = np.clip(1 - np.abs(_fractal(rng, size, 6, 2)), 0, 1) ** 8
    fine = np.clip(1 - np.abs(_noise(rng, size, max(8, size // 4))), 0, 1) ** 6
    v = 1 - rng.uniform(0.2, 0.4) * creases - rng.uniform(0.06, 0.16) * fine
    v = v * (1 + 0.03 * _noise(rng, size, size // 2))
    colour = np.asarray(_LEATHERS[rng.choice(len(_LEATHERS))], np.float32)
    return _Surface(v[:, :, None] * colour, _dark_under(rng))


_SURFACE_RENDERERS: dict[str, Callable[[np.random.Generator, int], _Surface]] = {
    "brushed_metal": _brushed_metal,
    "cast_metal": _cast_metal,
    "textile": _textile,
    "wood": _wood,
    "ceramic_tile": _ceramic_tile,
    "pcb": _pcb,
    "wafer": _wafer,
    "solar_mono": _solar_mono,
    "solar_poly": _solar_poly,
    "painted_plastic": _painted_plastic,
    "concrete": _concrete,
    "leather": _leather,
}


# --------------------------------------------------------------------------------------------
# Defects: each takes (rng, surface, severity 0/1/2, size) and returns (rgb, mask in [0, 1])
# --------------------------------------------------------------------------------------------


def _is_dark(s: _Surface) -> bool:
    """Dark surfaces (black paint, dark fabric) show defects light: exposed primer, light dust."""
    return not s.el and float(s.rgb.mean()) < 0.28


def _line_width(rng: np.random.Generator, sev: int, size: int, lo: float = 0.6, hi: float = 1.1) -> float:
    """Stroke width in pixels: about 1-3 px at 128, never thinner than 0.7 px."""
    return max(0.7, rng.uniform(lo, hi) * (1 + 0.4 * sev) * math.sqrt(size / 128))


def _polyline(p0: np.ndarray, p1: np.ndarray, bend: float, n: int = 12) -> list[tuple[float, float]]:
    """A quadratic Bezier from p0 to p1 bowed sideways by bend (unit coordinates)."""
    d = p1 - p0
    ctrl = (p0 + p1) / 2 + bend * np.array([-d[1], d[0]])
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t**2 * p1
    return [(float(a), float(b)) for a, b in pts]


def _scratch(rng: np.random.Generator, s: _Surface, sev: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    strokes = _Strokes(size)
    c = rng.uniform(0.2, 0.8, 2)
    theta = rng.uniform(0, math.pi)
    direction = np.array([math.cos(theta), math.sin(theta)])
    normal = np.array([-direction[1], direction[0]])
    length = min(0.9, rng.uniform(0.15, 0.3) * (1 + 0.7 * sev))
    count = 1 if rng.random() < 0.7 else int(rng.integers(2, 5))  # a scuff: parallel strokes
    spacing = rng.uniform(0.01, 0.03)
    width = _line_width(rng, sev, size)
    bend = rng.normal(0, 0.08)
    for k in range(count):
        off = c + normal * spacing * (k - (count - 1) / 2)
        half = length / 2 * rng.uniform(0.6, 1.0) if k else length / 2
        strokes.line(_polyline(off - direction * half, off + direction * half, bend), width * (0.7 if k else 1.0))
    m = strokes.mask()
    alpha = (0.4, 0.6, 0.85)[sev] * rng.uniform(0.85, 1.15)
    bright = _is_dark(s) or (not s.el and rng.random() < 0.6)
    target = np.minimum(s.rgb + 0.45, 1.0) if bright else s.rgb * 0.2
    return s.rgb + (m * min(alpha, 1.0))[:, :, None] * (target - s.rgb), m


def _crack_paths(rng: np.random.Generator, sev: int) -> list[list[tuple[float, float]]]:
    """Polylines of one crack: a wandering trunk with side branches, a straight cut or a star."""
    style = rng.choice(3, p=[0.6, 0.25, 0.15])
    start = rng.uniform(0.2, 0.8, 2)
    paths: list[list[tuple[float, float]]] = []

    def walk(p: np.ndarray, angle: float, length: float, wiggle: float, depth: int) -> None:
        steps = max(3, int(length / 0.025))
        step = length / steps
        pts = [tuple(p)]
        for i in range(steps):
            angle += rng.normal(0, wiggle)
            p = p + step * np.array([math.cos(angle), math.sin(angle)])
            pts.append(tuple(p))
            if depth < 2 and i < steps - 1 and rng.random() < 0.12 + 0.05 * sev:
                side = rng.choice([-1.0, 1.0])
                rest = (length - i * step) * rng.uniform(0.2, 0.55)
                walk(p, angle + side * rng.uniform(0.4, 1.1), rest, wiggle, depth + 1)
        paths.append(pts)

    length = min(1.2, rng.uniform(0.2, 0.3) * (1 + 0.75 * sev))
    angle = rng.uniform(0, 2 * math.pi)
    if style == 0:
        walk(start - length / 2 * np.array([math.cos(angle), math.sin(angle)]), angle, length, 0.3, 0)
    elif style == 1:  # long and nearly straight, as cleaving cracks in solar cells
        walk(start - length * np.array([math.cos(angle), math.sin(angle)]), angle, length * 1.8, 0.04, 1)
    else:  # impact star
        for k in range(int(rng.integers(3, 7))):
            walk(start, angle + k * 2 * math.pi / 5 + rng.normal(0, 0.3), length * rng.uniform(0.3, 0.6), 0.2, 1)
    return paths


def _crack(rng: np.random.Generator, s: _Surface, sev: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    strokes = _Strokes(size)
    width = _line_width(rng, sev, size, 0.5, 0.9)
    paths = _crack_paths(rng, sev)
    for i, pts in enumerate(paths):
        strokes.line(pts, width if i == len(paths) - 1 else width * 0.75)
    m = strokes.mask()
    strength = min(0.95, (0.45, 0.7, 0.88)[sev] * rng.uniform(0.9, 1.1))
    if _is_dark(s):  # a crack in a dark coating shows the lighter material beneath
        return _blend(s.rgb, np.minimum(s.rgb + 0.4, 1.0), m * strength), m
    return s.rgb * (1 - strength * m)[:, :, None], m


def _blob(rng: np.random.Generator, size: int, c: np.ndarray, rx: float, ry: float, theta: float,
          rough: float, cells: int = 6) -> np.ndarray:
    """Normalised distance (1 on the boundary) of a rotated ellipse with a noisy outline."""
    x, y = _coords(size)
    dx, dy = x - c[0], y - c[1]
    ct, st = math.cos(theta), math.sin(theta)
    u, v = (dx * ct + dy * st) / rx, (-dx * st + dy * ct) / ry
    return np.sqrt(u * u + v * v) + rough * _noise(rng, size, cells)


def _hole(rng: np.random.Generator, s: _Surface, sev: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _coords(size)
    rgb = s.rgb
    mask = np.zeros((size, size), np.float32)
    light = rng.uniform(0, 2 * math.pi)
    count = 1 if rng.random() < 0.8 else int(rng.integers(2, 5))
    centre = rng.uniform(0.15, 0.85, 2)
    for k in range(count):
        r = max(1.3 / size, rng.uniform(0.012, 0.022) * (1 + 0.9 * sev) * (0.6 if k else 1.0))
        c = centre + (rng.normal(0, 0.05, 2) if k else 0)
        d = _blob(rng, size, c, r, r * rng.uniform(0.75, 1.0), rng.uniform(0, math.pi), rng.uniform(0.02, 0.12))
        aa = 1.0 / (r * size)
        inside = _smoothstep(1 + aa, 1 - aa, d)
        facing = 0.5 + 0.5 * np.cos(np.arctan2(y - c[1], x - c[0]) - light)
        rim = np.exp(-(((d - 1.05) / 0.18) ** 2)) * facing * (1 - inside)
        depth = rng.uniform(0.02, 0.1) * (1 + 0.5 * np.cos(np.arctan2(y - c[1], x - c[0]) - light + math.pi))
        rgb = rgb + (rim * 0.35)[:, :, None] * (1 - rgb)
        rgb = rgb + inside[:, :, None] * (depth[:, :, None] - rgb)
        mask = np.maximum(mask, np.maximum(inside, rim * 0.6))
    return rgb, mask


_STAINS = {"dark": None, "rust": (0.5, 0.28, 0.1), "light": (0.95, 0.95, 0.92), "ring": None}


def _spot(rng: np.random.Generator, s: _Surface, sev: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    kind = "dark" if s.el else str(rng.choice(list(_STAINS), p=[0.45, 0.2, 0.15, 0.2]))
    if kind in ("dark", "ring") and _is_dark(s):
        kind = "light"
    r = max(2.0 / size, rng.uniform(0.03, 0.055) * (1 + 0.9 * sev))
    c = rng.uniform(0.15, 0.85, 2)
    d = _blob(rng, size, c, r, r * rng.uniform(0.55, 1.0), rng.uniform(0, math.pi), rng.uniform(0.1, 0.3))
    soft = rng.uniform(0.1, 0.5)
    m = _smoothstep(1 + soft, 1 - soft, d)
    region = m
    if kind == "ring":  # a dried drop: darker rim, lighter inside
        m = np.exp(-(((d - 0.95) / 0.1) ** 2)) * 0.9 + m * 0.3
    m = np.clip(m * (0.8 + 0.2 * _noise(rng, size, max(4, size // 8))), 0, 1)
    alpha = (0.3, 0.55, 0.8)[sev] * rng.uniform(0.85, 1.15)
    if _STAINS[kind] is None:
        target = s.rgb * 0.25
    else:
        target = np.asarray(_STAINS[kind], np.float32) * (max(float(s.rgb.mean()), 0.05) / 0.45) ** 0.5
    return s.rgb + (m * min(alpha, 1.0))[:, :, None] * (target - s.rgb), region


def _contamination(rng: np.random.Generator, s: _Surface, sev: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    strokes = _Strokes(size)
    centre = rng.uniform(0.2, 0.8, 2)
    spread = rng.uniform(0.04, 0.09) * (1 + 0.6 * sev)
    count = int(rng.integers(*((6, 14), (14, 35), (35, 90))[sev]))
    px = 1.0 / size
    sizes = rng.uniform(0.5, 1.3, count) * max(1.0, size / 128) ** 0.5 * px
    big = rng.random(count) < 0.12
    sizes[big] *= rng.uniform(1.8, 3.0, int(big.sum()))
    pos = centre + spread * rng.standard_normal((count, 2))
    opacity = rng.integers(150, 256, count)
    for (cx, cy), r, a in zip(pos, sizes, opacity):
        strokes.ellipse(cx, cy, r, r * rng.uniform(0.6, 1.0), int(a))
    for _ in range(int(rng.integers(0, 2 + sev))):  # fibres
        p0 = centre + spread * rng.standard_normal(2)
        ang = rng.uniform(0, 2 * math.pi)
        p1 = p0 + rng.uniform(0.03, 0.1) * np.array([math.cos(ang), math.sin(ang)])
        strokes.line(_polyline(p0, p1, rng.normal(0, 0.3), 8), 0.7, int(rng.integers(150, 230)))
    m = strokes.mask()
    if s.el or (rng.random() < 0.7 and not _is_dark(s)):
        target = np.asarray((0.12, 0.1, 0.08), np.float32) * rng.uniform(0.5, 1.5)
    else:
        target = np.asarray((0.92, 0.92, 0.9), np.float32)
    alpha = (0.6, 0.8, 0.95)[sev]
    return _blend(s.rgb, target, m * alpha), m


def _chip_polygon(rng: np.random.Generator, c: np.ndarray, radius: float, n: int = 14) -> list[tuple[float, float]]:
    ang = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = radius * (1 + 0.35 * rng.uniform(-1, 1, n))
    return [(float(c[0] + r * math.cos(a)), float(c[1] + r * math.sin(a))) for a, r in zip(ang, rad)]


def _finger_interruptions(rng: np.random.Generator, s: _Surface, sev: int, size: int) -> np.ndarray:
    """Dark stripes along the fingers from a break to the busbar (canonical frame, then transposed)."""
    strokes = _Strokes(size)
    ends = (0.0, *s.busbars, 1.0)
    centre = rng.uniform(0.15, 0.85, 2)
    width = max(s.period * 0.5, 1.2 / size)
    for _ in range(int(rng.integers(*((2, 4), (3, 7), (6, 13))[sev]))):
        fx = round((centre[0] + rng.normal(0, 0.07)) / s.period) * s.period
        fy = float(np.clip(centre[1] + rng.normal(0, 0.1), 0.02, 0.98))
        k = int(np.searchsorted(ends, fy))
        lo, hi = ends[max(0, k - 1)], ends[min(len(ends) - 1, k)]
        y0, y1 = (lo, fy) if rng.random() < 0.5 else (fy, hi)
        strokes.rect(fx - width / 2, y0, fx + width / 2, y1, int(rng.integers(170, 256)))
    m = strokes.mask()
    return m.T.copy() if s.transposed else m


def _missing_part(rng: np.random.Generator, s: _Surface, sev: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    if s.el:
        m = _finger_interruptions(rng, s, sev, size)
        return s.rgb * (1 - m * rng.uniform(0.45, 0.7))[:, :, None], m
    strokes = _Strokes(size)
    if s.parts and s.part_mask is not None:  # PCB: one or more pads gone, bare board beneath
        x, y = _coords(size)
        box_m = np.zeros((size, size), np.float32)
        pad = 1.5 / size
        for i in rng.choice(len(s.parts), size=min(len(s.parts), 1 + sev), replace=False):
            x0, y0, x1, y1 = s.parts[i]
            inside = (x >= x0 - pad) & (x <= x1 + pad) & (y >= y0 - pad) & (y <= y1 + pad)
            box_m = np.maximum(box_m, inside.astype(np.float32))
        m = box_m * s.part_mask
    elif s.parts:  # tiles, dies: a chipped corner or (severe) the whole piece
        x0, y0, x1, y1 = s.parts[rng.integers(len(s.parts))]
        if sev == 2 and rng.random() < 0.5:
            strokes.rect(x0, y0, x1, y1)
        else:
            corner = np.array([(x0, y0), (x1, y0), (x0, y1), (x1, y1)][rng.integers(4)])
            strokes.polygon(_chip_polygon(rng, corner, (x1 - x0) * (0.25, 0.4, 0.6)[sev]))
        box = _Strokes(size)
        box.rect(x0, y0, x1, y1)
        m = strokes.mask() * box.mask()
    elif s.period:  # textile: missing threads along the weave
        along = s.angle + (0 if rng.random() < 0.5 else math.pi / 2)
        t = np.array([math.cos(along), math.sin(along)])
        n = np.array([-t[1], t[0]])
        c = rng.uniform(0.2, 0.8, 2)
        half_l = rng.uniform(0.1, 0.2) * (1 + 0.8 * sev)
        half_w = s.period * (0.5 + sev) / 2 + 0.5 / size
        strokes.polygon([tuple(c + a * t * half_l + b * n * half_w) for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
        m = strokes.mask()
    else:  # a piece broken off at an edge or corner
        side = int(rng.integers(6))
        if side < 4:
            t = rng.uniform(0.15, 0.85)
            c = np.array([(t, 0.0), (1.0, t), (t, 1.0), (0.0, t)][side])
        else:
            c = np.array([(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)][rng.integers(4)])
        strokes.polygon(_chip_polygon(rng, c, rng.uniform(0.08, 0.12) * (1 + 0.6 * sev)))
        m = strokes.mask()
    under = s.under if isinstance(s.under, np.ndarray) else np.asarray(s.under, np.float32)
    if not s.parts and abs(float(under.mean()) - float(s.rgb.mean())) < 0.15:  # dark part, dark backdrop
        under = np.full(3, rng.uniform(0.6, 0.85), np.float32)
    return s.rgb + m[:, :, None] * (under - s.rgb), m


def _bent(rng: np.random.Generator, s: _Surface, sev: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _coords(size)
    c = rng.uniform(0.2, 0.8, 2)
    radius = rng.uniform(0.08, 0.13) * (1 + 0.45 * sev)
    shift = rng.uniform(0.015, 0.025) * (1 + 0.8 * sev)
    light = rng.uniform(0, 2 * math.pi)
    lx, ly = math.cos(light), math.sin(light)
    dx, dy = x - c[0], y - c[1]
    if rng.random() < 0.5:  # dent: a round bump that pinches the texture towards its centre
        g = np.exp(-(dx * dx + dy * dy) / (2 * radius * radius))
        sx, sy = x + shift * g * dx / radius, y + shift * g * dy / radius
        slope = g * (dx * lx + dy * ly) / radius
    else:  # fold: a crease line that shifts the texture across it
        theta = rng.uniform(0, math.pi)
        tx, ty = math.cos(theta), math.sin(theta)
        along, across = dx * tx + dy * ty, -dx * ty + dy * tx
        w = radius * 0.45
        g = np.exp(-(across**2) / (2 * w * w) - along**2 / (2 * (radius * 2.5) ** 2))
        sx, sy = x - shift * g * ty * 1.5, y + shift * g * tx * 1.5
        slope = g * across / w * (-ty * lx + tx * ly)
    rgb = _remap(s.rgb, sx, sy)
    strength = (0.12, 0.22, 0.35)[sev] * rng.uniform(0.8, 1.2)
    rgb = rgb * (1 + strength * slope)[:, :, None]
    m = _smoothstep(0.2, 0.5, g)
    return rgb, m


def _inactive(rng: np.random.Generator, s: _Surface, sev: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """EL: a disconnected, dark area (a cloud between busbars or a fragment cut off by a crack).
    Other surfaces: a scorched, darkened patch through which the texture still shows."""
    keep = rng.uniform(*((0.5, 0.68), (0.25, 0.45), (0.04, 0.2))[sev])
    if s.el and rng.random() < 0.5:  # a corner fragment cut off by a straight crack
        strokes = _Strokes(size)
        cx, cy = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))[rng.integers(4)]
        a, b = rng.uniform(0.2, 0.45, 2) * (1 + 0.35 * sev)
        sx, sy = (1 if cx == 0 else -1), (1 if cy == 0 else -1)
        strokes.polygon([(cx - sx * 0.01, cy - sy * 0.01), (cx + sx * a, cy - sy * 0.01),
                         (cx + sx * a * 0.5 + rng.normal(0, 0.03), cy + sy * b * 0.5 + rng.normal(0, 0.03)),
                         (cx - sx * 0.01, cy + sy * b)])
        m = strokes.mask()
        return s.rgb * (1 - m * (1 - keep))[:, :, None], m
    c = rng.uniform(0.25, 0.75, 2)
    rx = rng.uniform(0.14, 0.26) * (1 + 0.3 * sev)
    if s.el:  # elongated along the busbars
        theta, ry = rng.normal(0, 0.08) + (math.pi / 2 if s.transposed else 0.0), rx * rng.uniform(0.25, 0.55)
    else:
        theta, ry = rng.uniform(0, math.pi), rx * rng.uniform(0.55, 1.0)
    d = _blob(rng, size, c, rx, ry, theta, rng.uniform(0.08, 0.2), 10)
    soft = rng.uniform(0.05, 0.2) if s.el else rng.uniform(0.3, 0.6)
    m = np.clip(_smoothstep(1 + soft, 1 - soft, d) * (0.85 + 0.15 * _noise(rng, size, max(4, size // 6))), 0, 1)
    if s.el:
        return s.rgb * (1 - m * (1 - keep))[:, :, None], m
    keep = max(keep, 0.22)
    scorch = s.rgb * keep * np.asarray((1.0, 0.8, 0.6), np.float32)
    return _blend(s.rgb, scorch, m), m


_DEFECT_RENDERERS: dict[str, Callable[[np.random.Generator, _Surface, int, int], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "spot": _spot,
    "contamination": _contamination,
    "missing_part": _missing_part,
    "bent": _bent,
    "inactive": _inactive,
}


# --------------------------------------------------------------------------------------------
# Camera: lighting, colour, blur, noise
# --------------------------------------------------------------------------------------------


def _camera(rng: np.random.Generator, rgb: np.ndarray, el: bool) -> Image.Image:
    """Lighting gradient, vignetting, brightness/contrast/gamma, colour cast or grayscale, blur and
    sensor noise. Draws the same random numbers whatever the image, so paired renders match."""
    size = rgb.shape[0]
    x, y = _coords(size)
    gain, contrast, gamma = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.25), rng.uniform(0.8, 1.25)
    phi, slope = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.25)
    vignette = rng.uniform(0, 0.2 if el else 0.35)
    cast = 1 + rng.normal(0, 0.04, 3).astype(np.float32)
    grayscale = el or rng.random() < 0.2
    blur = rng.uniform(0.3, 1.0) * size / 128 if rng.random() < 0.35 else 0.0
    sigma = rng.uniform(0.004, 0.025) if el else rng.uniform(0.0, 0.03)
    noise = rng.standard_normal((size, size, 1 if grayscale else 3), dtype=np.float32)

    light = gain * (1 + slope * ((x - 0.5) * math.cos(phi) + (y - 0.5) * math.sin(phi)))
    light = light * (1 - vignette * 2 * ((x - 0.5) ** 2 + (y - 0.5) ** 2))
    # Contrast pivots on a fixed grey, not the image mean, so a defect changes only its own pixels.
    if grayscale:
        v = 0.299 * rgb[:, :, 0] + 0.587 * rgb[:, :, 1] + 0.114 * rgb[:, :, 2]
        img = (np.clip(((v - 0.45) * contrast + 0.45) * light, 0, 1) ** gamma)[:, :, None]
    else:
        img = np.clip(((rgb - 0.45) * contrast + 0.45) * light[:, :, None] * cast, 0, 1) ** gamma
    if blur > 0.2:
        pil = Image.fromarray((img[:, :, 0] if grayscale else img).__mul__(255).astype(np.uint8))
        pil = pil.filter(ImageFilter.GaussianBlur(blur))
        img = np.asarray(pil, np.float32).reshape(size, size, -1) * (1 / 255)
    out = np.clip((img + sigma * noise) * 255 + 0.5, 0, 255).astype(np.uint8)
    if grayscale:
        out = np.repeat(out, 3, axis=2)
    return Image.fromarray(out)


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

_SURFACE_WORDS: dict[str, tuple[str, ...]] = {
    "brushed_metal": ("brushed metal surface", "brushed steel plate", "brushed aluminium sheet", "brushed metal part"),
    "cast_metal": ("cast metal part", "cast iron surface", "sand-cast metal surface", "rough metal casting"),
    "textile": ("woven fabric", "textile", "woven cloth", "fabric sample"),
    "wood": ("wood surface", "wooden board", "wood panel", "timber plank"),
    "ceramic_tile": ("ceramic tile", "tiled surface", "glazed ceramic tile", "tile panel"),
    "pcb": ("printed circuit board", "PCB", "circuit board", "bare PCB"),
    "wafer": ("silicon wafer", "semiconductor wafer", "wafer with dies", "wafer surface"),
    "solar_mono": ("monocrystalline solar cell", "mono solar cell", "solar cell", "photovoltaic cell",
                   "mono-Si PV cell"),
    "solar_poly": ("polycrystalline solar cell", "poly solar cell", "multicrystalline solar cell", "solar cell",
                   "photovoltaic cell"),
    "painted_plastic": ("painted surface", "plastic part", "painted plastic panel", "moulded plastic surface",
                        "coated panel"),
    "concrete": ("concrete surface", "concrete slab", "stone surface", "cement block"),
    "leather": ("leather surface", "leather hide", "leather sample", "leather upholstery"),
}

# (noun phrase, countable) and adjectives per defect; surface-specific words override below.
_DEFECT_NOUNS: dict[str, tuple[tuple[str, bool], ...]] = {
    "scratch": (("scratch", True), ("scuff", True), ("scrape", True), ("score mark", True), ("abrasion", True)),
    "crack": (("crack", True), ("fracture", True), ("fissure", True), ("micro-crack", True), ("crack line", True)),
    "hole": (("hole", True), ("pit", True), ("puncture", True), ("pinhole", True), ("perforation", True)),
    "spot": (("spot", True), ("stain", True), ("blotch", True), ("smudge", True), ("stain mark", True)),
    "contamination": (("contamination", False), ("dust particles", False), ("debris", False),
                      ("foreign particles", False), ("dirt", False)),
    "missing_part": (("missing piece", True), ("chipped-off corner", True), ("broken-off chunk", True),
                     ("missing section", True)),
    "bent": (("dent", True), ("deformation", True), ("bend", True), ("warped area", True), ("bulge", True)),
    "inactive": (("dark region", True), ("burn mark", True), ("scorched area", True), ("dark discoloured patch", True)),
}
_DEFECT_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "scratch": ("scratched", "scuffed", "scraped", "abraded"),
    "crack": ("cracked", "fractured", "broken"),
    "hole": ("holed", "pitted", "punctured", "perforated"),
    "spot": ("stained", "spotted", "blotchy", "smudged"),
    "contamination": ("contaminated", "dirty", "dusty"),
    "missing_part": ("incomplete", "chipped"),
    "bent": ("bent", "dented", "deformed", "warped"),
    "inactive": ("darkened", "burnt", "scorched"),
}
_MISSING_WORDS = {  # surface-specific (nouns, adjectives) for missing_part
    "pcb": ((("missing pad", True), ("missing solder pad", True), ("missing copper pad", True)), ("incomplete",)),
    "ceramic_tile": ((("missing tile piece", True), ("chipped-off tile corner", True), ("missing tile fragment", True)),
                     ("chipped", "incomplete")),
    "wafer": ((("missing die", True), ("chipped-off die corner", True), ("missing die fragment", True)),
              ("chipped", "incomplete")),
    "textile": ((("missing thread", True), ("missing yarn section", True), ("gap in the weave", True)),
                ("incomplete", "threadbare")),
    "solar": ((("finger interruption", True), ("missing finger segment", True), ("finger interruptions", False)),
              ("finger-interrupted",)),
}
_EL_INACTIVE = ((("inactive region", True), ("dark inactive area", True), ("electrically disconnected area", True),
                 ("dead cell area", True), ("dark region", True)), ("partly inactive", "partially dark", "darkened"))

_SEVERITY_WORDS = {
    "subtle": ("subtle", "faint", "minor", "slight"),
    "moderate": ("moderate", "noticeable", "visible", "medium"),
    "severe": ("severe", "major", "serious", "pronounced"),
}
_SEVERITY_ADVERBS = {"subtle": ("slightly", "lightly", "faintly"), "moderate": ("moderately", "noticeably", "visibly"),
                     "severe": ("severely", "heavily", "badly")}
_LOCATION_WORDS = {
    "top-left": ("in the top-left corner", "at the upper left", "near the top-left corner"),
    "top": ("near the top edge", "at the top", "in the upper part"),
    "top-right": ("in the top-right corner", "at the upper right", "near the top-right corner"),
    "left": ("on the left side", "near the left edge", "at the left"),
    "centre": ("in the centre", "in the middle", "at the center"),
    "right": ("on the right side", "near the right edge", "at the right"),
    "bottom-left": ("in the bottom-left corner", "at the lower left", "near the bottom-left corner"),
    "bottom": ("near the bottom edge", "at the bottom", "in the lower part"),
    "bottom-right": ("in the bottom-right corner", "at the lower right", "near the bottom-right corner"),
}
_PHOTO = ("a photo of", "an image of", "a close-up photo of", "a picture of", "an inspection image of",
          "a macro photo of")
_GRAY_PHOTO = ("a grayscale photo of", "a monochrome image of", "a black and white photo of")
_EL_PHOTO = ("an electroluminescence image of", "an EL image of", "an electroluminescence photo of")

_DEFECT_TEMPLATES = (
    "{photo} a {adj} {surf}",
    "{photo} a {surf} with {np}",
    "{photo} a {surf} with {np} {loc}",
    "{np} {loc} on a {surf}",
    "a {adj} {surf} with {sev} damage {loc}",
    "a defective {surf}: {noun} {loc}",
    "{photo} a {surf} showing {np}",
    "there is {np} {loc} of this {surf}",
    "{photo} a damaged {surf} with {np}",
    "a {surf} rejected at inspection because of {np}",
    "close-up of {np} on a {surf}",
    "a faulty {surf} with {np} {loc}",
    "{noun} on a {surf}, {sev}, {locword}",
    "a {surf} that is {adj} {loc}",
    "{photo} a {surf} with a visible defect: {noun}",
    "{photo} a {adv} {adj} {surf}",
    "an anomalous {surf} with {np} {loc}",
    "defect: {noun}; part: {surf}; location: {locword}; severity: {severity}",
)
_GOOD_TEMPLATES = (
    "{photo} a flawless {surf}",
    "{photo} a defect-free {surf}",
    "{photo} a good {surf}",
    "{photo} an intact {surf}",
    "a {surf} in perfect condition",
    "{photo} a pristine {surf}",
    "an inspection image of an acceptable {surf}",
    "a {surf} that passed inspection",
    "{photo} a clean, undamaged {surf}",
    "a normal {surf} without any defects",
    "{photo} a perfect {surf}",
    "a good part: {surf}, no anomaly",
)
_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU](?!ni|se|ne))")


def _defect_words(surface: str, defect: str) -> tuple[tuple[tuple[str, bool], ...], tuple[str, ...]]:
    if defect == "missing_part":
        key = "solar" if surface in EL_SURFACES else surface
        return _MISSING_WORDS.get(key, (_DEFECT_NOUNS[defect], _DEFECT_ADJECTIVES[defect]))
    if defect == "inactive" and surface in EL_SURFACES:
        return _EL_INACTIVE
    return _DEFECT_NOUNS[defect], _DEFECT_ADJECTIVES[defect]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def caption_for(surface: str, defect: str, severity: str, location: str, rng: np.random.Generator, *,
                grayscale: bool = False, size_word: str = "") -> str:
    """A varied caption naming the surface and the defect (a synonym of it), with where it is and
    how bad it is; for ``defect == GOOD`` a caption that calls the part good and claims no defect.
    ``size_word`` (e.g. "small", "long") describes the defect's measured extent when given."""
    _check_surface(surface)
    defect = _check_defect(defect)
    surf = _pick(rng, _SURFACE_WORDS[surface])
    photos = _PHOTO
    if surface in EL_SURFACES and rng.random() < 0.6:
        photos = _EL_PHOTO
    elif grayscale and rng.random() < 0.5:
        photos = _GRAY_PHOTO
    photo = _pick(rng, photos)
    if defect == GOOD:
        text = _pick(rng, _GOOD_TEMPLATES).format(photo=photo, surf=surf)
        return _ARTICLE.sub(r"\1n ", text)
    if severity not in _SEVERITY_WORDS:
        raise ValueError(f"unknown severity {severity!r}; expected one of {SEVERITIES}")
    if location not in _LOCATION_WORDS:
        raise ValueError(f"unknown location {location!r}; expected one of {LOCATIONS}")
    nouns, adjectives = _defect_words(surface, defect)
    noun, countable = nouns[int(rng.integers(len(nouns)))]
    sev = _pick(rng, _SEVERITY_WORDS[severity])
    qualifier = _pick(rng, (sev, size_word) if size_word else (sev,)) if rng.random() < 0.8 else ""
    phrase = f"{qualifier} {noun}".strip()
    fields = dict(
        photo=photo, surf=surf, noun=noun, adj=_pick(rng, adjectives), sev=sev, severity=severity,
        adv=_pick(rng, _SEVERITY_ADVERBS[severity]), np=f"a {phrase}" if countable else phrase,
        loc=_pick(rng, _LOCATION_WORDS[location]), locword=location.replace("-", " "),
    )
    text = _pick(rng, _DEFECT_TEMPLATES).format(**fields)
    return _ARTICLE.sub(r"\1n ", text)


_DESCRIPTIONS = {
    GOOD: "defect-free surface", "scratch": "surface with a scratch", "crack": "surface with a crack",
    "hole": "surface with a hole", "spot": "surface with a spot or stain",
    "contamination": "surface with dust or particle contamination", "missing_part": "surface with a missing part",
    "bent": "bent or dented surface", "inactive": "surface with a dark inactive region",
}


def class_description(defect: str) -> str:
    """A short English description of a class (one of DEFECTS or a good-class name), for class
    names in prompts and reports: ``class_description("missing_part") == "surface with a missing part"``."""
    return _DESCRIPTIONS[_check_defect(defect.strip().lower())]


def zero_shot_prompts(defect: str, surface: str | None = None) -> list[str]:
    """A few prompts for one class, for zero-shot classification: ``zero_shot_prompts("crack")``
    gives "a photo of a cracked surface", ... . ``defect`` is one of DEFECTS or a good-class name
    (``none``, ``good``, ``ok``, ``normal``, ``functional``); ``defective`` gives generic defect
    prompts. ``surface`` (one of SURFACES, or free text such as "solar cell") replaces "surface"."""
    if surface is None:
        surf = "surface"
    elif surface in _SURFACE_WORDS:
        surf = _SURFACE_WORDS[surface][0]
    else:
        surf = surface
    name = defect.strip().lower()
    if name in GOOD_ALIASES:
        return [f"a photo of a flawless {surf}", f"a photo of a defect-free {surf}", f"a photo of a good {surf}",
                f"a close-up photo of an intact {surf}", f"a photo of a {surf} in perfect condition"]
    if name in ("defective", "defect", "bad", "anomaly", "anomalous"):
        return [f"a photo of a defective {surf}", f"a photo of a damaged {surf}", f"a photo of a faulty {surf}",
                f"a close-up photo of a {surf} with a defect"]
    name = _check_defect(name)
    nouns, adjectives = _defect_words("solar_mono" if "solar" in surf else surface or "", name)
    prompts = [f"a photo of a {adj} {surf}" for adj in adjectives[:2]]
    prompts += [f"a photo of a {surf} with {'a ' if c else ''}{n}" for n, c in nouns[:2]]
    prompts.append(f"a close-up photo of {'a ' if nouns[0][1] else ''}{nouns[0][0]} on a {surf}")
    return [_ARTICLE.sub(r"\1n ", p) for p in prompts]


# --------------------------------------------------------------------------------------------
# Public API: samples
# --------------------------------------------------------------------------------------------


def _check_surface(surface: str) -> str:
    if surface not in _SURFACE_RENDERERS:
        raise ValueError(f"unknown surface {surface!r}; expected one of {SURFACES}")
    return surface


def _check_defect(defect: str) -> str:
    if defect in GOOD_ALIASES:
        return GOOD
    if defect not in _DEFECT_RENDERERS:
        raise ValueError(f"unknown defect {defect!r}; expected one of {(GOOD, *DEFECTS)} (or 'good')")
    return defect


def _location(m: np.ndarray) -> str:
    x, y = _coords(m.shape[0])
    total = float(m.sum())
    cx = float((m.sum(axis=0) * x[0]).sum()) / total
    cy = float((m.sum(axis=1) * y[:, 0]).sum()) / total
    col, row = min(2, int(cx * 3)), min(2, int(cy * 3))
    return LOCATIONS[row * 3 + col]


def _size_word(defect: str, m: np.ndarray) -> str:
    """'short'/'long' for strokes (by extent), 'tiny'...'large' for areas (by covered fraction)."""
    on = m > 0.25
    if not on.any():
        return ""
    if defect in ("scratch", "crack"):
        rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
        extent = max(rows[-1] - rows[0], cols[-1] - cols[0]) / m.shape[0]
        return "short" if extent < 0.2 else "long" if extent > 0.5 else ""
    area = float(m.mean())
    return "tiny" if area < 0.003 else "small" if area < 0.02 else "medium-sized" if area < 0.08 else "large"


def render_sample(seed: int, index: int, image_size: int = 128, *, surface: str | None = None,
                  defect: str | None = None, defect_probability: float = 0.7) -> SyntheticSample:
    """Deterministic sample number ``index`` of the stream ``seed``.

    ``surface`` / ``defect`` are fixed if given (``defect`` may be ``GOOD`` or "good"), else drawn:
    the surface uniformly, a defect with probability ``defect_probability`` (kind uniform).
    Background, camera and caption come from their own random streams, so renders of one
    ``(seed, index, surface)`` with different ``defect`` share the same background and camera.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    if not MIN_SIZE <= image_size <= MAX_SIZE:
        raise ValueError(f"image_size must be in [{MIN_SIZE}, {MAX_SIZE}], got {image_size}")
    if not 0.0 <= defect_probability <= 1.0:
        raise ValueError(f"defect_probability must be in [0, 1], got {defect_probability}")
    choice, background, flaw, camera, words = (
        np.random.default_rng(s) for s in np.random.SeedSequence((int(seed), int(index))).spawn(_STREAMS)
    )
    drawn_surface = SURFACES[int(choice.integers(len(SURFACES)))]
    drawn_defect = DEFECTS[int(choice.integers(len(DEFECTS)))] if choice.random() < defect_probability else GOOD
    surface = drawn_surface if surface is None else _check_surface(surface)
    defect = drawn_defect if defect is None else _check_defect(defect)

    surf = _SURFACE_RENDERERS[surface](background, image_size)
    severity = location = size_word = ""
    mask = None
    rgb = surf.rgb
    if defect != GOOD:
        sev = int(flaw.choice(3, p=(0.3, 0.4, 0.3)))
        severity = SEVERITIES[sev]
        rgb, m = _DEFECT_RENDERERS[defect](flaw, surf, sev, image_size)
        peak = float(m.max())
        if peak < 1e-3:  # nothing landed on the image (never seen; kept for safety)
            m = np.zeros_like(m)
            m[image_size // 2, image_size // 2] = peak = 1.0
        m = np.clip(m / peak, 0, 1)  # the region, full strength even where strokes are sub-pixel
        location, size_word = _location(m), _size_word(defect, m)
        mask = Image.fromarray((np.clip(m, 0, 1) * 255 + 0.5).astype(np.uint8))
    image = _camera(camera, rgb.astype(np.float32, copy=False), surf.el)
    grayscale = surf.el or _is_gray(image)
    caption = caption_for(surface, defect, severity, location, words, grayscale=grayscale, size_word=size_word)
    return SyntheticSample(image, surface, defect, severity, location, caption, mask)


def _is_gray(image: Image.Image) -> bool:
    a = np.asarray(image)
    return bool(np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 1], a[:, :, 2]))
