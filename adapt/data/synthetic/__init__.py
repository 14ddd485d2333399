"""Procedural industrial surfaces with defects and captions: the ``synthetic`` data source.

Every image is drawn from a seed and an index alone (``render_sample(seed, index)``), with NumPy
and Pillow only, fast enough to generate on the fly in data-loader workers. It serves:

- image-caption pairs to pretrain a small CLIP backbone from scratch (captions name the surface,
  the defect with synonyms, where it is and how bad it is, or say that the part is good);
- the labelled ``--data synthetic[:classes][@SIZE]`` source for demos and tests (``source.py``);
- features that transfer to real inspection images, in particular electroluminescence (EL)
  images of solar cells as in ELPV: grayscale cells with busbars and fingers, thin dark cracks,
  dark inactive areas, finger interruptions, grainy poly-crystalline vs uniform mono cells.

A sample is rendered from independent random streams (choice, background, defect, camera,
caption) spawned from ``(seed, index)``, so the good and the defective render of one
``(seed, index, surface)`` share background and camera and differ only where the defect is.

Modules: ``noise`` (primitives), ``surfaces``, ``defects``, ``camera``, ``captions`` (words),
``render`` (``render_sample``), ``source`` (the labelled source; imported on demand).
"""

from adapt.data.synthetic.wording import caption_for, class_description, zero_shot_prompts
from adapt.data.synthetic.defects import DEFECTS, GOOD, GOOD_ALIASES, LOCATIONS, SEVERITIES
from adapt.data.synthetic.render import MAX_SIZE, MIN_SIZE, SyntheticSample, render_sample
from adapt.data.synthetic.surfaces import EL_SURFACES, SURFACES

__all__ = [
    "DEFECTS", "EL_SURFACES", "GOOD", "GOOD_ALIASES", "LOCATIONS", "MAX_SIZE", "MIN_SIZE", "SEVERITIES", "SURFACES",
    "SyntheticSample", "caption_for", "class_description", "render_sample", "zero_shot_prompts",
]
