"""The names of the adaptation methods, importable without torch.

``adapt.methods`` implements them (and re-exports ``Method``); the CLI checks ``--method``
against this list before it imports anything heavy.
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
