"""File content digests: the one place a file's sha256 is computed (model versions, weight ids,
dataset fingerprints). Standard library only."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes (raises ``OSError`` when it can't be read)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
