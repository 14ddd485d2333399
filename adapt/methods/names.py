"""Names of the built-in methods, as constants for code and tests (importable without torch).

What methods exist, and what each needs, is ``adapt.methods.registry``: a method added there
needs no name here.
"""

from __future__ import annotations

from enum import Enum


class Method(str, Enum):
    ZEROSHOT = "zeroshot"
    LINEAR = "linear"
    COOP = "coop"
    LORA = "lora"
    TIP_ADAPTER = "tip-adapter"
    PATCHCORE = "patchcore"  # anomaly mode: learns from good images only (--good-label)
