"""Good surfaces: one renderer per kind, each returning the image and the structure defects need."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from adapt.data.synthetic.noise import _blend, _coords, _fractal, _gray, _noise, _paint, _rotated, _smoothstep, _Strokes

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
EL_SURFACES = frozenset({"solar_mono", "solar_poly"})  # rendered as electroluminescence images


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


def _check_surface(surface: str) -> str:
    if surface not in _SURFACE_RENDERERS:
        raise ValueError(f"unknown surface {surface!r}; expected one of {SURFACES}")
    return surface
