"""Defects drawn onto a surface: each renderer takes (rng, surface, severity 0/1/2, size) and
returns (rgb, mask in [0, 1])."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from adapt.data.synthetic.noise import _blend, _coords, _noise, _remap, _smoothstep, _Strokes
from adapt.data.synthetic.surfaces import _Surface

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


def _check_defect(defect: str) -> str:
    if defect in GOOD_ALIASES:
        return GOOD
    if defect not in _DEFECT_RENDERERS:
        raise ValueError(f"unknown defect {defect!r}; expected one of {(GOOD, *DEFECTS)} (or 'good')")
    return defect
