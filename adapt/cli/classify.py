"""``adapt classify``: the factory inspection client (files, folders, or a watched folder)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from adapt.errors import AdaptError

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


def run(args: argparse.Namespace) -> int:
    from services.client_files import ResultWriter, collect_images, watch_folder

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
    output = ResultWriter(args.csv)
    done = False
    try:
        client = _connect(args)
        try:
            _wait_ready(client, args)
            _check_server(client, args)
            output.write(_classify(client, files, args))
            if args.watch:
                output.commit()  # a watch runs for days: show its CSV as it grows
                watch_folder(Path(args.watch), lambda ready: output.write(_classify(client, ready, args)), args.poll_interval)
            done = True
        finally:
            client.close()
    finally:
        output.close(keep=done)
    failed = sum(1 for row in output.rows if row.error)
    review = sum(1 for row in output.rows if row.needs_review)
    print(f"classified {len(output.rows) - failed} image(s): {review} need review, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


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
    from services.client_files import HINT, server_error

    try:
        client.wait_until_serving(args.wait_ready, check_timeout=args.timeout)
    except NotServing as exc:
        if args.wait_ready:
            hint = "" if exc.answered else HINT
            raise AdaptError(f"server {args.server} not ready after {args.wait_ready:g}s ({exc.problem}){hint}") from exc
        if not exc.answered:
            raise AdaptError(f"cannot reach server {args.server} ({exc.problem}){HINT}") from exc
    except grpc.RpcError as err:
        if args.wait_ready or err.code() != grpc.StatusCode.UNIMPLEMENTED:  # a server without health: go on
            raise server_error(err, args.server, args.timeout) from err


def _check_server(client, args: argparse.Namespace) -> None:
    """Fail early with one line when the server is unreachable or refuses us."""
    import grpc

    from services.client_files import server_error

    try:
        models = client.list_models()
    except grpc.RpcError as err:
        raise server_error(err, args.server, args.timeout) from err
    names = [m.name for m in models]
    if args.model and args.model not in names and args.model not in [m.source_uri for m in models]:
        raise AdaptError(f"server {args.server} has no model {args.model!r} (it serves: {', '.join(names)})")


def _classify(client, files: list[Path], args: argparse.Namespace) -> list:
    """The result rows (``services.client_files.Row``) of ``files``, one request each or streamed."""
    import grpc

    from services.client_files import Row, row_from_answer, save_heatmap, server_error

    if not files:
        return []
    rows = []
    heatmap = bool(args.heatmaps)
    try:
        if args.stream:
            for path, answer in zip(files, client.classify_many(files, stream=True, model=args.model, heatmap=heatmap), strict=True):
                rows.append(row_from_answer(path, answer))
                save_heatmap(path, answer, args.heatmaps)
        else:
            for path in files:
                try:
                    answer = client.classify(path, model=args.model, heatmap=heatmap)
                    rows.append(row_from_answer(path, answer))
                    save_heatmap(path, answer, args.heatmaps)
                except grpc.RpcError as err:
                    if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED):
                        raise
                    rows.append(Row(str(path), error=f"{err.code().name}: {err.details()}"))
    except grpc.RpcError as err:
        raise server_error(err, args.server, args.timeout) from err
    except OSError as exc:
        raise AdaptError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    return rows


