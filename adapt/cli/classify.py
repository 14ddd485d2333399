"""``adapt classify``: the factory inspection client (files, folders, or a watched folder)."""

from __future__ import annotations

import argparse
import csv
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from adapt.errors import AdaptError
from adapt.contract.imageio import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Send images to an `adapt serve` server and print what it says: label, top probability,
whether the part needs human review, and the model version that answered.

PATHs are image files or folders (searched recursively for .png .jpg .jpeg .bmp .tif .tiff).
With --watch DIR, files that land in DIR later are classified as soon as they are completely
written, until Ctrl-C. Exit code 1 if any image could not be classified. --csv FILE never
holds a half-finished run: rows go to a temporary file beside it, renamed to FILE at the end
(with --watch: once the PATHs given are done; rows for new files are then appended to FILE).
With --wait-ready SECONDS it first waits for a server that is still starting (e.g. one just
launched in the background with `adapt serve ... &`).

examples:
  adapt classify --server localhost:50051 parts/
  adapt classify --server inspect-01:50051 --tls-ca ca.pem --token-file token.txt --csv out.csv parts/
  adapt classify --server localhost:50051 --watch /camera/outbox
  adapt serve --model run/model.onnx --host 127.0.0.1 & adapt classify --server 127.0.0.1:50051 --wait-ready 120 parts/
"""

CSV_COLUMNS = ("path", "label", "top_probability", "needs_review", "model_name", "model_version", "request_id", "error")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="classify images with a running inspection server",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files and/or folders (recursive)")
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="address of the inspection server")
    p.add_argument("--model", default="", help="model name to ask for (default: the server's default model)")
    p.add_argument(
        "--watch", metavar="DIR", help="keep classifying image files that appear in DIR (recursive) until Ctrl-C or SIGTERM"
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        help="with --watch: seconds between looks at DIR; a file is read once its size stopped changing "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--csv", metavar="FILE", help="write results as CSV to FILE ('-' = standard output) instead of a table"
    )
    p.add_argument(
        "--heatmaps", metavar="DIR",
        help="ask for heatmaps (anomaly models, e.g. patchcore) and write DIR/<image>.heatmap.png: the image as the "
        "model sees it with the anomaly map overlaid (red = above the model's threshold)",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="send all images over one streaming call (faster for many images) instead of one call each",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer (default: %(default)s)")
    p.add_argument(
        "--wait-ready",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the server's health check to say SERVING, e.g. right after "
        "starting `adapt serve` (default: %(default)s, don't wait)",
    )
    g = p.add_argument_group("security")
    g.add_argument("--tls-ca", metavar="PEM", help="CA certificate that signed the server's certificate; enables TLS")
    g.add_argument("--tls-cert", metavar="PEM", help="this client's certificate, for servers that require mTLS")
    g.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    g.add_argument(
        "--tls-server-name", metavar="NAME", help="name to verify the server certificate against, if not the host"
    )
    tokens = g.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token-file",
        metavar="FILE",
        help="file whose first token (one per line, '#' comments) is sent as bearer token",
    )
    tokens.add_argument(
        "--token",
        default=os.environ.get("ADAPT_TOKEN"),
        help="bearer token (default: $ADAPT_TOKEN); prefer --token-file, command lines are visible to other users",
    )
    p.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    if not args.paths and not args.watch:
        raise AdaptError("nothing to classify: give image files/folders, or --watch DIR")
    files = collect_images(args.paths)
    if args.watch and not Path(args.watch).is_dir():
        raise AdaptError(f"--watch: not a folder: {args.watch}")
    if args.wait_ready < 0:
        raise AdaptError("--wait-ready must be >= 0 seconds")
    if args.heatmaps:
        heatmaps = Path(args.heatmaps).expanduser().resolve()
        if args.watch and heatmaps.is_relative_to(Path(args.watch).expanduser().resolve()):
            raise AdaptError("--heatmaps must not be inside the --watch folder (the overlays would be classified)")
        try:
            heatmaps.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AdaptError(f"cannot create --heatmaps {args.heatmaps}: {exc.strerror or exc}") from exc
    output = _Output(args.csv)
    done = False
    try:
        client = _connect(args)
        try:
            _wait_ready(client, args)
            _check_server(client, args)
            output.write(_classify(client, files, args))
            if args.watch:
                output.commit()  # a watch runs for days: show its CSV as it grows
                _watch(client, Path(args.watch), args, output)
            done = True
        finally:
            client.close()
    finally:
        output.close(keep=done)
    failed = sum(1 for row in output.rows if row.error)
    review = sum(1 for row in output.rows if row.needs_review)
    print(f"classified {len(output.rows) - failed} image(s): {review} need review, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


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


def _connect(args: argparse.Namespace):
    from services.auth import read_tokens
    from services.client import InspectionClient

    try:
        token = read_tokens(args.token_file)[0] if args.token_file else args.token
        return InspectionClient(
            args.server,
            root_cert=args.tls_ca,
            client_cert=args.tls_cert,
            client_key=args.tls_key,
            token=token,
            timeout=args.timeout,
            server_name=args.tls_server_name,
        )
    except OSError as exc:
        raise AdaptError(f"cannot read {exc.filename}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise AdaptError(str(exc)) from exc


def _wait_ready(client, args: argparse.Namespace) -> None:
    """Wait up to ``--wait-ready`` seconds for the health check to say SERVING; without it, check
    once that the server can be reached (health has no retries: a refusal is reported at once)."""
    import grpc

    from services.client import NotServing

    try:
        client.wait_until_serving(args.wait_ready, check_timeout=args.timeout)
    except NotServing as exc:
        if args.wait_ready:
            hint = "" if exc.answered else _HINT
            raise AdaptError(f"server {args.server} not ready after {args.wait_ready:g}s ({exc.problem}){hint}") from exc
        if not exc.answered:
            raise AdaptError(f"cannot reach server {args.server} ({exc.problem}){_HINT}") from exc
    except grpc.RpcError as err:
        if args.wait_ready or err.code() != grpc.StatusCode.UNIMPLEMENTED:  # a server without health: go on
            raise _server_error(err, args.server, args.timeout) from err


def _check_server(client, args: argparse.Namespace) -> None:
    """Fail early with one line when the server is unreachable or refuses us."""
    import grpc

    try:
        models = client.list_models()
    except grpc.RpcError as err:
        raise _server_error(err, args.server, args.timeout) from err
    names = [m.name for m in models]
    if args.model and args.model not in names and args.model not in [m.source_uri for m in models]:
        raise AdaptError(f"server {args.server} has no model {args.model!r} (it serves: {', '.join(names)})")


def _classify(client, files: list[Path], args: argparse.Namespace) -> list[Row]:
    import grpc

    if not files:
        return []
    rows = []
    heatmap = bool(args.heatmaps)
    try:
        if args.stream:
            for path, answer in zip(files, client.classify_many(files, stream=True, model=args.model, heatmap=heatmap), strict=True):
                rows.append(_row(path, answer))
                _save_heatmap(path, answer, args.heatmaps)
        else:
            for path in files:
                try:
                    answer = client.classify(path, model=args.model, heatmap=heatmap)
                    rows.append(_row(path, answer))
                    _save_heatmap(path, answer, args.heatmaps)
                except grpc.RpcError as err:
                    if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED):
                        raise
                    rows.append(Row(str(path), error=f"{err.code().name}: {err.details()}"))
    except grpc.RpcError as err:
        raise _server_error(err, args.server, args.timeout) from err
    except OSError as exc:
        raise AdaptError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    return rows


def _save_heatmap(path: Path, answer, folder: str | None) -> None:
    """Write the answer's heatmap overlay as FOLDER/<image name>.heatmap.png (a name already taken gets a suffix)."""
    if not folder or not answer.HasField("heatmap"):
        return
    target = Path(folder).expanduser() / f"{path.stem}.heatmap.png"
    n = 1
    while target.exists():
        target = target.with_name(f"{path.stem}-{n}.heatmap.png")
        n += 1
    target.write_bytes(answer.heatmap.overlay_png)


def _row(path: Path, answer) -> Row:
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


def _watch(client, folder: Path, args: argparse.Namespace, output: _Output) -> None:
    """Classify files that appear in ``folder`` once their size is stable, until Ctrl-C."""
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
                    output.write(_classify(client, ready, args))
                    done.update(ready)
                except AdaptError as exc:  # server away: keep the files pending and try again
                    logger.warning("%s; will retry", exc)
                for path in ready:
                    sizes.pop(path, None)
            time.sleep(args.poll_interval)
    except KeyboardInterrupt:
        print("stopped watching", file=sys.stderr)


_HINT = "; is `adapt serve` running?"


def _server_error(err, target: str, timeout: float) -> AdaptError:
    import grpc

    from services.client import connection_problem

    code, lines = err.code(), (err.details() or "").strip().splitlines()
    details = lines[0] if lines else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return AdaptError(f"cannot reach server {target} ({connection_problem(err)}){_HINT}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AdaptError(f"server {target} refused the call: {details} (pass --token-file or --token)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return AdaptError(f"server {target} did not answer within {timeout:g}s")
    return AdaptError(f"server {target}: {code.name}: {details}")


class _Output:
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
            print(f"{_short(row.path, 48):<48} ERROR: {row.error}")
            return
        model = f"{row.model_name}:{row.model_version}"
        review = "yes" if row.needs_review else "no"
        print(
            f"{_short(row.path, 48):<48} {row.label:<16} {row.top_probability:>6.3f} {review:<6} {model:<16}",
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


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]
