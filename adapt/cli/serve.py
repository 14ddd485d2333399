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

on Ray Serve (pip install 'adapt-fewshot[ray]'): replicas, autoscaling, a cluster of machines:
  adapt serve --engine ray --replicas 2 --model m.onnx --port 9000     # local Ray, 2 replicas
  adapt serve --engine ray --address auto --min-replicas 1 --max-replicas 8 --model models:/elpv@champion
  Ray's gRPC proxy listens on every interface ([::]:PORT) without TLS: use --token-file. Load balancers
  probe http://HOST:8000/-/healthz (--http-port) or grpc.health.v1.Health/Check on the gRPC port.
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
    g = p.add_argument_group("Ray Serve engine (--engine ray)")
    g.add_argument(
        "--engine",
        choices=("grpc", "ray"),
        default="grpc",
        help="grpc (default): one server process; ray: a Ray Serve application (replicas on one machine "
        "or a cluster; needs the 'ray' extra)",
    )
    g.add_argument("--replicas", type=int, default=1, help="replicas (processes) holding the model (default: %(default)s)")
    g.add_argument("--min-replicas", type=int, help="autoscale between --min-replicas and --max-replicas")
    g.add_argument("--max-replicas", type=int, help="autoscale between --min-replicas and --max-replicas")
    g.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=8.0,
        help="autoscaling adds replicas when they hold more requests than this each (default: %(default)s)",
    )
    g.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=64,
        help="requests one replica takes at once; more wait in Ray's proxy (default: %(default)s)",
    )
    g.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica (default: %(default)s)")
    g.add_argument(
        "--address",
        help="Ray cluster to join: HOST:PORT of its head, or 'auto' (the one `ray start` began on this machine); "
        "default: start a local Ray for this server",
    )
    g.add_argument(
        "--http-port", type=int, default=8000, help="Ray's HTTP proxy, for GET /-/healthz (default: %(default)s)"
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
    from services.logs import use_json_logs
    from services.server import InspectionServer, ServeError

    # The server's own events (loads, reloads, drains) at the level the user asked for, whatever
    # the levels of third-party loggers are.
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose > 1 else logging.INFO
    for name in ("services", __name__):
        logging.getLogger(name).setLevel(level)
    if args.log_format == "json":
        use_json_logs()
    if args.engine == "ray":
        return _run_ray(args, _serve_config(args))
    try:
        server = InspectionServer(_serve_config(args))
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


def _serve_config(args: argparse.Namespace):
    from services.hosted import BatchingConfig
    from services.server import ServeConfig

    try:
        return ServeConfig(
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
    except ValueError as exc:
        raise AdaptError(str(exc)) from exc


def _run_ray(args: argparse.Namespace, serve_config) -> int:
    """``--engine ray``: deploy on Ray Serve, wait for SIGTERM / Ctrl-C, then take the app down."""
    try:
        from services.ray_app import RayConfig, RayInspection
    except ImportError as exc:
        raise AdaptError(f"--engine ray needs Ray Serve: pip install 'adapt-fewshot[ray]' ({exc})") from exc
    from services.server import ServeError

    if args.metrics_port:
        logger.warning("--metrics-port is ignored with --engine ray: Ray exports its own metrics")
    try:
        config = RayConfig(
            serve=serve_config,
            replicas=args.replicas,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            target_ongoing_requests=args.target_ongoing_requests,
            max_ongoing_requests=args.max_ongoing_requests,
            replica_cpus=args.replica_cpus,
            address=args.address,
            http_port=args.http_port,
        )
        app = RayInspection(config).start()
    except (ValueError, ServeError, ConnectionError) as exc:
        raise AdaptError(str(exc)) from exc
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own handlers
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(3600):
        pass
    logger.info("shutting down the Ray Serve application")
    app.stop()
    return 0
