"""Operator feedback, stored durably as a training dataset for the next retrain.

Layout of ``DATA_DIR`` (both are dataset formats of ``adapt retrain --data``):
- ``<label>/<request_id>.<ext>`` -- the images, a folder dataset;
- ``feedback.csv`` -- a manifest ``path,label,request_id,model_name,model_version,predicted,
  received_at,note`` with paths relative to the CSV.

Every image is written to a hidden temp file, fsynced, renamed into place and its directory
fsynced; each CSV row is appended and fsynced; so a crash leaves either the old or the new
state. One label per request id: submitting another label moves the image and rewrites the CSV.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from adapt.contract.imageio import decode_image

logger = logging.getLogger(__name__)

CSV_NAME = "feedback.csv"
CSV_COLUMNS = ("path", "label", "request_id", "model_name", "model_version", "predicted", "received_at", "note")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_KEEP_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif"}  # others are stored as PNG


def check_request_id(request_id: str) -> None:
    """Request ids become file names: 1-128 of ``[A-Za-z0-9._-]``, starting with a letter or digit."""
    if not _REQUEST_ID.match(request_id):
        raise ValueError(f"invalid request id {request_id[:40]!r}: use 1-128 characters from A-Z a-z 0-9 . _ -")


def check_label(label: str) -> None:
    """Labels become folder names: no path separators, no leading dot, no control characters."""
    if not label or len(label) > 128 or label != label.strip():
        raise ValueError(f"invalid label {label[:40]!r}: 1-128 characters, no surrounding spaces")
    if label.startswith(".") or any(c in label for c in "/\\") or any(ord(c) < 32 for c in label):
        raise ValueError(f"invalid label {label[:40]!r}: no '/', '\\', control characters or leading '.'")


@dataclass(frozen=True)
class StoredFeedback:
    path: str  # relative to the data dir, e.g. "defect/ab12.png"
    duplicate: bool  # the same label had already been stored for this request id


class FeedbackStore:
    """Thread-safe writer of ``DATA_DIR`` (see the module docstring)."""

    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir).expanduser()
        self.csv_path = self.root / CSV_NAME
        self._lock = threading.Lock()
        self._remove_stale_temp_files()
        self._stored = self._read_index()  # request_id -> (label, relative path)

    def _remove_stale_temp_files(self) -> None:
        """Temp files of writes that a killed server never finished (``_write_atomic``'s ``.*.tmp``):
        never part of the store, removed when a server opens it."""
        if not self.root.is_dir():
            return
        stale = [p for p in self.root.rglob(".*.tmp") if p.is_file()]
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            logger.warning("feedback store %s: removed %d unfinished temp file(s) left by an interrupted write", self.root, len(stale))

    def save(
        self,
        request_id: str,
        label: str,
        image: bytes,
        *,
        model_name: str = "",
        model_version: str = "",
        predicted: str = "",
        note: str = "",
    ) -> StoredFeedback:
        """Store ``image`` under ``label``; raises ``ValueError`` (bad id/label) or ``ImageDecodeError``."""
        check_request_id(request_id)
        check_label(label)
        data, ext = _storable(image)
        relative = f"{label}/{request_id}{ext}"
        with self._lock:
            previous = self._stored.get(request_id)
            if previous is not None and previous[0] == label:
                return StoredFeedback(previous[1], duplicate=True)
            _write_atomic(self.root / relative, data)
            if previous is not None:  # relabelled: drop the old image and its row
                (self.root / previous[1]).unlink(missing_ok=True)
                self._rewrite_without(request_id)
            received = datetime.now(UTC).isoformat(timespec="milliseconds")
            self._append_row([relative, label, request_id, model_name, model_version, predicted, received, note])
            self._stored[request_id] = (label, relative)
        return StoredFeedback(relative, duplicate=False)

    def _read_index(self) -> dict[str, tuple[str, str]]:
        if not self.csv_path.exists():
            return {}
        with open(self.csv_path, newline="") as fh:
            return {
                row["request_id"]: (row["label"], row["path"]) for row in csv.DictReader(fh) if row.get("request_id")
            }

    def _append_row(self, row: list[str]) -> None:
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(CSV_COLUMNS)
            writer.writerow(row)
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            _fsync_dir(self.root)

    def _rewrite_without(self, request_id: str) -> None:
        with open(self.csv_path, newline="") as fh:
            rows = [row for row in csv.reader(fh)]
        kept = [rows[0], *(r for r in rows[1:] if len(r) > 2 and r[2] != request_id)]
        buffer = io.StringIO()
        csv.writer(buffer).writerows(kept)
        _write_atomic(self.csv_path, buffer.getvalue().encode())


class RecentRequests:
    """The images of recent classify requests, for feedback without re-sending the image.

    A bounded LRU by total bytes; it keeps references to the request's bytes, no copies.
    """

    @dataclass(frozen=True)
    class Entry:
        image: bytes
        model: str  # hosted model name (selector)
        model_version: str
        predicted: str

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, RecentRequests.Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, request_id: str, entry: RecentRequests.Entry) -> None:
        size = len(entry.image)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(request_id, None)
            if old is not None:
                self._bytes -= len(old.image)
            self._entries[request_id] = entry
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted.image)

    def get(self, request_id: str) -> RecentRequests.Entry | None:
        with self._lock:
            return self._entries.get(request_id)


def _storable(image: bytes) -> tuple[bytes, str]:
    """The bytes to store and their extension: the original file for PNG/JPEG/BMP/TIFF, else PNG."""
    decoded = decode_image(image)  # raises ImageDecodeError for non-images
    with Image.open(io.BytesIO(image)) as img:
        fmt = img.format or ""
    if fmt in _KEEP_FORMATS:
        return bytes(image), _KEEP_FORMATS[fmt]
    buffer = io.BytesIO()
    decoded.save(buffer, format="PNG")
    return buffer.getvalue(), ".png"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the whole new one."""
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    if created:
        _fsync_dir(path.parent.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
