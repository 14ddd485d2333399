"""The file side of a classification client: which files to send, the rows they give, writing
them (an aligned table, or CSV that appears only complete), heatmap overlays beside them, a
folder watcher, and gRPC failures as one-line errors. ``adapt classify`` is argument parsing
around these and ``services.client.InspectionClient``."""

from __future__ import annotations

import csv
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from adapt.contract.imageio import IMAGE_EXTENSIONS
from adapt.errors import AdaptError
from services.client import connection_problem

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("path", "label", "top_probability", "needs_review", "model_name", "model_version", "request_id", "error")


@dataclass
class Row:
    path: str
    label: str = ""
    top_probability: float = 0.0
    needs_review: bool = False
    model_name: str = ""
    model_version: str = ""
    request_id: str = ""
    error: str = ""


def collect_images(paths: Iterable[str]) -> list[Path]:
    """Files as given; folders searched recursively for image files (sorted)."""
    found = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            raise AdaptError(f"no such file or folder: {text}")
    return found


def save_heatmap(path: Path, answer, folder: str | None) -> None:
    """Write the answer's heatmap overlay as FOLDER/<image name>.heatmap.png (a name already taken gets a suffix)."""
    if not folder or not answer.HasField("heatmap"):
        return
    target = Path(folder).expanduser() / f"{path.stem}.heatmap.png"
    n = 1
    while target.exists():
        target = target.with_name(f"{path.stem}-{n}.heatmap.png")
        n += 1
    target.write_bytes(answer.heatmap.overlay_png)


def row_from_answer(path: Path, answer) -> Row:
    if answer.HasField("error"):
        return Row(str(path), request_id=answer.request_id, error=answer.error.message)
    return Row(
        str(path),
        answer.label,
        answer.top_probability,
        answer.needs_review,
        answer.model_name,
        answer.model_version,
        answer.request_id,
    )


def watch_folder(folder: Path, classify: Callable[[list[Path]], None], poll_interval: float) -> None:
    """Hand ``classify`` the image files that appear in ``folder`` once their size is stable, until
    Ctrl-C or SIGTERM; when it raises ``AdaptError`` (server away) the files stay pending and are
    tried again."""
    done = set(collect_images([str(folder)]))  # already there: not new
    sizes: dict[Path, tuple[int, int]] = {}
    print(f"watching {folder} for new images (Ctrl-C or SIGTERM to stop)", file=sys.stderr)
    if threading.current_thread() is threading.main_thread():  # a service manager stops it with SIGTERM
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            ready = []
            for path in collect_images([str(folder)]):
                if path in done:
                    continue
                try:
                    st = path.stat()
                except OSError:
                    continue  # gone again
                seen = (st.st_size, st.st_mtime_ns)
                if st.st_size > 0 and sizes.get(path) == seen:
                    ready.append(path)
                sizes[path] = seen
            if ready:
                try:
                    classify(ready)
                    done.update(ready)
                except AdaptError as exc:  # server away: keep the files pending and try again
                    logger.warning("%s; will retry", exc)
                for path in ready:
                    sizes.pop(path, None)
            time.sleep(poll_interval)
    except KeyboardInterrupt:
        print("stopped watching", file=sys.stderr)


HINT = "; is `adapt serve` running?"


def server_error(err: grpc.RpcError, target: str, timeout: float) -> AdaptError:
    """A failed call as one line for the user, naming the server and what to do."""
    code, lines = err.code(), (err.details() or "").strip().splitlines()
    details = lines[0] if lines else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return AdaptError(f"cannot reach server {target} ({connection_problem(err)}){HINT}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AdaptError(f"server {target} refused the call: {details} (pass --token-file or --token)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return AdaptError(f"server {target} did not answer within {timeout:g}s")
    return AdaptError(f"server {target}: {code.name}: {details}")


class ResultWriter:
    """Results as an aligned table on stdout, or CSV (to stdout, or to a file that appears only
    complete: rows go to a ``.part`` file beside it, renamed on ``close(keep=True)``)."""

    def __init__(self, csv_path: str | None):
        self.rows: list[Row] = []
        self._csv = None
        self._fh = None
        self._target = self._partial = None
        if csv_path == "-":
            self._fh = sys.stdout
        elif csv_path:
            self._target = Path(csv_path).expanduser()
            self._partial = self._target.with_name(f".{self._target.name}.{os.getpid()}.part")
            try:
                self._fh = open(self._partial, "w", newline="")
            except OSError as exc:
                raise AdaptError(f"cannot write --csv {csv_path}: {exc.strerror or exc}") from exc
        if self._fh is not None:
            self._csv = csv.writer(self._fh)
            self._csv.writerow(CSV_COLUMNS)
        self._header_done = False

    def write(self, rows: list[Row]) -> None:
        self.rows += rows
        for row in rows:
            if self._csv is not None:
                self._csv.writerow(
                    [
                        row.path,
                        row.label,
                        f"{row.top_probability:.4f}",
                        int(row.needs_review),
                        row.model_name,
                        row.model_version,
                        row.request_id,
                        row.error,
                    ]
                )
            else:
                self._print(row)
        if self._fh is not None:
            self._fh.flush()

    def _print(self, row: Row) -> None:
        if not self._header_done:
            print(f"{'PATH':<48} {'LABEL':<16} {'TOP':>6} {'REVIEW':<6} {'MODEL':<16}")
            self._header_done = True
        if row.error:
            print(f"{short(row.path, 48):<48} ERROR: {row.error}")
            return
        model = f"{row.model_name}:{row.model_version}"
        review = "yes" if row.needs_review else "no"
        print(
            f"{short(row.path, 48):<48} {row.label:<16} {row.top_probability:>6.3f} {review:<6} {model:<16}",
            flush=True,
        )

    def commit(self) -> None:
        """Put the CSV file in place now; later rows are appended to it."""
        if self._partial is not None:
            os.replace(self._partial, self._target)
            self._partial = None

    def close(self, keep: bool = True) -> None:
        """Finish the output; a CSV file not yet in place is renamed there if ``keep``, else removed."""
        if self._fh is None or self._fh is sys.stdout:
            return
        self._fh.close()
        if keep:
            self.commit()
        elif self._partial is not None:
            self._partial.unlink(missing_ok=True)


def short(text: str, width: int) -> str:
    """``text``, or its last ``width`` characters after an ellipsis."""
    return text if len(text) <= width else "..." + text[-(width - 3) :]
