"""``adapt serve``: run the gRPC inspection service on an exported classifier."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from adapt.errors import AdaptError

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Serve an exported classifier over gRPC (service adapt.inspection.v1.InspectionService, plus
grpc.health.v1.Health and server reflection, so `grpcurl -plaintext HOST:PORT list` works).

Concurrent requests are batched dynamically. With a models:/NAME@ALIAS URI the alias is polled
and the server hot-reloads when it moves (no request fails); a local .onnx file is reloaded when
it is replaced. SIGTERM / Ctrl-C: health goes NOT_SERVING, new calls are refused, calls in
flight finish (up to --drain-seconds), exit 0.

examples:
  adapt serve --model runs/linear/model.onnx --host 127.0.0.1      # this machine only
  adapt serve --model models:/elpv@champion --tracking-uri sqlite:///mlflow.db --metrics-port 9100
  adapt serve --model m.onnx --tls-cert srv.pem --tls-key srv.key --tls-ca ca.pem --token-file tokens.txt
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over gRPC (the inspection service)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="URI",
        help="model to serve: a local exported .onnx file, models:/NAME@ALIAS (followed; hot reload) "
        "or models:/NAME/VERSION. Repeat to serve several; the first is the default",
    )
    p.add_argument(
        "--host",
        default="0.0.0.0",
        help="address to listen on: 0.0.0.0 (default) = every network interface, so camera PCs can connect; "
        "127.0.0.1 = this machine only. Beyond this machine, use --token-file and TLS (a warning says so otherwise)",
    )
    p.add_argument(
        "--port", type=int, default=50051, help="port to listen on; 0 picks a free one (default: %(default)s)"
    )
    g = p.add_argument_group("batching and performance")
    g.add_argument(
        "--max-batch-size",
        type=int,
        default=32,
        help="most images run through the model together (default: %(default)s)",
    )
    g.add_argument(
        "--max-queue-delay-ms",
        type=float,
        default=2.0,
        help="how long a queued image may wait for others still arriving to join its batch; a lone "
        "request is never delayed (default: %(default)s)",
    )
    g.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="images waiting for the model beyond this are refused with RESOURCE_EXHAUSTED (default: %(default)s)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=32,
        help="gRPC handler threads: requests decoded / waiting at once; each open stream holds one "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="ONNX Runtime threads per inference; 0 = its default, one per core (default: %(default)s)",
    )
    g.add_argument(
        "--ort-spin",
        nargs="?",
        const="on",
        default="off",
        choices=("off", "run", "on"),
        help="ONNX Runtime threads busy-waiting for work: off (default), run (only while an inference runs), "
        "on (also between inferences: lower latency on dedicated cores, but it starves the threads that "
        "decode requests on shared cores); a bare --ort-spin means on",
    )
    g.add_argument(
        "--max-message-mb",
        type=float,
        default=32.0,
        help="largest request accepted, in MiB; bigger ones get RESOURCE_EXHAUSTED (default: %(default)s)",
    )
    g = p.add_argument_group("security")
    g.add_argument("--tls-cert", metavar="PEM", help="server certificate (chain); with --tls-key enables TLS")
    g.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    g.add_argument(
        "--tls-ca", metavar="PEM", help="CA of client certificates: clients must present one it signed (mTLS)"
    )
    g.add_argument(
        "--token-file",
        metavar="FILE",
        help="bearer tokens, one per line ('#' comments); calls must send 'authorization: Bearer TOKEN' "
        "(health checks stay open)",
    )
    g = p.add_argument_group("models and feedback")
    g.add_argument(
        "--tracking-uri",
        help="MLflow tracking/registry URI for models:/ URIs (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    g.add_argument(
        "--reload-interval",
        type=float,
        default=10.0,
        help="seconds between checks for a new model version (alias moved / file replaced); 0 = never "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--reject-threshold",
        type=float,
        help="override the models' reject threshold: answers whose top probability is below it get needs_review",
    )
    g.add_argument(
        "--wait-for-model",
        action="store_true",
        help="start even if no model version can be loaded yet; calls get UNAVAILABLE until one is",
    )
    g.add_argument(
        "--data-dir",
        default="feedback",
        help="where SubmitFeedback stores images (DATA_DIR/<label>/<request_id>.png) and feedback.csv; "
        "usable as `adapt retrain --data DATA_DIR` (default: %(default)s)",
    )
    g.add_argument("--allow-new-labels", action="store_true", help="accept feedback labels the model does not have")
    g.add_argument(
        "--feedback-cache-mb",
        type=float,
        default=256.0,
        help="MiB of recent request images kept so feedback can omit the image (default: %(default)s)",
    )
    g = p.add_argument_group("operations")
    g.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics on this port at /metrics; 0 = off (default)",
    )
    g.add_argument(
        "--drain-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, how long calls in flight may take to finish (default: %(default)s)",
    )
    g.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log lines as text or one JSON object each"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adapt.cli import checks

    for uri in args.model:  # user errors first, in milliseconds
        if not args.wait_for_model or uri.startswith("models:/"):
            checks.check_model(uri, args.tracking_uri, registered=not args.wait_for_model)
    for option in ("tls_cert", "tls_key", "tls_ca", "token_file"):
        checks.check_file(getattr(args, option), "--" + option.replace("_", "-"))
    from services.hosted import BatchingConfig
    from services.logs import use_json_logs
    from services.server import InspectionServer, ServeConfig, ServeError

    # The server's own events (loads, reloads, drains) at the level the user asked for, whatever
    # the levels of third-party loggers are.
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose > 1 else logging.INFO
    for name in ("services", __name__):
        logging.getLogger(name).setLevel(level)
    if args.log_format == "json":
        use_json_logs()
    try:
        config = ServeConfig(
            models=tuple(args.model),
            host=args.host,
            port=args.port,
            batching=BatchingConfig(args.max_batch_size, args.max_queue_delay_ms, args.max_queue),
            workers=args.workers,
            intra_op_threads=args.intra_op_threads,
            ort_spin=args.ort_spin,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_ca=args.tls_ca,
            token_file=args.token_file,
            data_dir=args.data_dir,
            reject_threshold=args.reject_threshold,
            reload_interval=args.reload_interval,
            metrics_port=args.metrics_port,
            max_message_mb=args.max_message_mb,
            tracking_uri=args.tracking_uri,
            allow_new_labels=args.allow_new_labels,
            feedback_cache_mb=args.feedback_cache_mb,
            wait_for_model=args.wait_for_model,
        )
        server = InspectionServer(config)
        server.start()
    except (ValueError, ServeError, OSError) as exc:
        raise AdaptError(str(exc)) from exc
    stop = threading.Event()
    signals = []

    def on_signal(signum, _frame):
        signals.append(signum)
        if len(signals) > 1:  # a second Ctrl-C: stop waiting for calls in flight
            logger.warning("second signal: cancelling calls in flight")
            server.stop_now()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    while not stop.wait(3600):
        pass
    logger.info("received %s: shutting down", signal.Signals(signals[0]).name)
    server.stop(grace=args.drain_seconds)
    return 0
