"""The camera: lighting, colour or grayscale, blur and sensor noise over a rendered scene."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from adapt.data.synthetic.noise import _coords


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


def _is_gray(image: Image.Image) -> bool:
    a = np.asarray(image)
    return bool(np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 1], a[:, :, 2]))
