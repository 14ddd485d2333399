"""``render_sample``: one deterministic sample (image, ground truth, mask, caption) from a seed and an index."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from adapt.data.synthetic.camera import _camera, _is_gray
from adapt.data.synthetic.wording import caption_for
from adapt.data.synthetic.defects import _DEFECT_RENDERERS, DEFECTS, GOOD, LOCATIONS, SEVERITIES, _check_defect
from adapt.data.synthetic.noise import _coords
from adapt.data.synthetic.surfaces import _SURFACE_RENDERERS, SURFACES, _check_surface

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
