"""Words: captions of rendered samples, class descriptions and zero-shot prompts."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from adapt.data.synthetic.defects import GOOD, GOOD_ALIASES, LOCATIONS, SEVERITIES, _check_defect
from adapt.data.synthetic.surfaces import EL_SURFACES, _check_surface

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
