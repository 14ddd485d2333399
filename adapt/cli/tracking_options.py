"""MLflow options shared by the commands that track runs (``retrain``, ``pretrain``, ``models log``)."""

from __future__ import annotations

import argparse


def add_tracking_options(parser: argparse.ArgumentParser, *, registry: bool = True, optional: bool = True) -> None:
    """``--tracking-uri``, ``--experiment`` and, with ``registry``, ``--register`` / ``--promote-metric``;
    with ``optional``, ``--no-tracking``."""
    g = parser.add_argument_group("MLflow tracking")
    g.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI, e.g. http://mlflow:5000 (default: $MLFLOW_TRACKING_URI, else the embedded sqlite:///mlflow.db here)")
    g.add_argument("--experiment", default=None, metavar="NAME", help="MLflow experiment (default: <command>-<dataset>)")
    if registry:
        g.add_argument("--register", default=None, metavar="NAME",
                       help="register the exported model as a new version of NAME; alias 'champion' moves to it only if it "
                            "beats the current champion on the same held-out data, else it becomes 'challenger'")
        from adapt.tracking.registry import DEFAULT_PROMOTE_METRIC, GATE_METRICS

        g.add_argument("--promote-metric", default=DEFAULT_PROMOTE_METRIC, choices=GATE_METRICS, metavar="METRIC",
                       help=f"held-out metric the promotion gate compares: {', '.join(GATE_METRICS)} (default: %(default)s)")
    if optional:
        g.add_argument("--no-tracking", action="store_true", help="do not log to MLflow (results still go to --output-dir)")


def make_hooks(args: argparse.Namespace):
    """The ``adapt.pipelines.retrain.RunHooks`` for these options, after checking the tracking store answers.

    Runs before any data loading or training, so an unreachable server fails in seconds.
    Returns ``None`` with ``--no-tracking``.
    """
    from adapt.errors import AdaptError
    from adapt.tracking.registry import validate_model_name
    from adapt.pipelines.retrain_tracking import RetrainTracker
    from adapt.tracking.store import preflight, resolve_tracking_uri

    if getattr(args, "no_tracking", False):
        if getattr(args, "register", None):
            raise AdaptError("--register needs MLflow tracking; drop --no-tracking")
        return None
    if args.register:
        validate_model_name(args.register)
    uri = resolve_tracking_uri(args.tracking_uri)
    quiet_http_retries(args)
    preflight(uri)
    return RetrainTracker(uri, experiment=args.experiment, register=args.register, promote_metric=args.promote_metric)


def quiet_http_retries(args: argparse.Namespace) -> None:
    """urllib3 warns on every MLflow retry; the tracker reports the outcome in one line instead (shown again with -vv)."""
    import logging

    if getattr(args, "verbose", 0) < 2:
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def start_pretrain_run(args, params: dict, data: str, run_name: str):
    """An MLflow run for a pretraining (rank 0 only), after checking the store answers; None with --no-tracking."""
    import os

    if args.no_tracking or int(os.environ.get("LOCAL_RANK", "0")) != 0 or int(os.environ.get("NODE_RANK", "0")) != 0:
        return None
    from adapt.tracking.runs import start_run
    from adapt.tracking.store import default_experiment, preflight, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    preflight(uri)
    experiment = args.experiment or default_experiment("pretrain", data)
    return start_run(uri, experiment, run_name, params, command="pretrain")


def run_tracked(run, train):
    """``train(loggers)`` with ``run``'s Lightning logger (none without a run); if it raises, the run
    ends KILLED (Ctrl-C) or FAILED and the error goes on."""
    try:
        from adapt.training.mlflow_logger import run_logger

        return train([run_logger(run)] if run else None)
    except BaseException as exc:
        if run is not None:
            run.end_quietly("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise


def finish_pretrain_run(run, result, metrics: dict, params: dict | None = None) -> None:
    """Log ``metrics`` (and late ``params``) and the written backbone into ``run``, then end it; a
    tracking failure is printed, not raised (the backbone is on disk either way)."""
    from adapt.tracking.store import TrackingError

    try:
        if params:
            run.log_params(params)
        run.log_metrics(metrics)
        for name in ("open_clip_config.json", "pretrain_metrics.json"):
            if (result.output_dir / name).is_file():
                run.log_artifact(result.output_dir / name, "checkpoint")
        run.log_artifact(result.checkpoint, "checkpoint")
        run.end("FINISHED")
        print(f"  MLflow run: {run.url}")
    except TrackingError as exc:
        run.end_quietly("FAILED")
        print(f"  MLflow logging failed ({exc}); the checkpoint is in {result.output_dir}")
