"""``adapt models``: the MLflow model registry -- list versions, promote one, log a retrain folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from adapt.cli.tracking_options import add_tracking_options

METRIC_COLUMNS = ("balanced_accuracy", "accuracy", "macro_f1")

EPILOG = """\
examples:
  adapt models list
  adapt models list parts --tracking-uri http://mlflow:5000
  adapt models promote parts 4 --reason "approved after line trial"
  adapt models log runs/retrain/parts-linear-16shot-seed1-20250101-120000 --register parts
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="MLflow model registry: list versions and aliases, promote a version, log a retrain folder",
        description="The registry view and manual promotion. 'champion' is the alias the inspection service "
        "serves (models:/NAME@champion); `adapt retrain --register NAME` moves it only to a better model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    ls = actions.add_parser("list", help="registered versions with their aliases and held-out metrics")
    ls.add_argument("name", nargs="?", default=None, help="registered model (default: all)")
    ls.add_argument("--tracking-uri", default=None, metavar="URI", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    ls.set_defaults(func=run_list)

    pr = actions.add_parser("promote", help="point an alias (default champion) at a version, deliberately")
    pr.add_argument("name", help="registered model")
    pr.add_argument("version", help="version number to promote")
    pr.add_argument("--alias", default="champion", help="alias to move (default: %(default)s)")
    pr.add_argument("--reason", default="", help="why (kept with who and when in the version's tags)")
    pr.add_argument("--tracking-uri", default=None, metavar="URI", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    pr.set_defaults(func=run_promote)

    lg = actions.add_parser(
        "log",
        help="log an existing `adapt retrain` output folder as an MLflow run (and register it through the gate)",
        description="For a retrain whose MLflow logging failed (e.g. the tracking server was down): logs the folder's "
        "params, curves, metrics, confusion matrix, labels and model as a new run, and with --register creates a "
        "version that goes through the same champion gate as `adapt retrain --register`.",
    )
    lg.add_argument("run_dir", metavar="RUN_DIR", help="output folder of adapt retrain (holds model.onnx and metrics.json)")
    add_tracking_options(lg, optional=False)
    lg.set_defaults(func=run_log)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _client(args: argparse.Namespace, create: bool = False):
    from adapt.cli.tracking_options import quiet_http_retries
    from adapt.errors import AdaptError
    from adapt.tracking.store import mlflow_client, preflight, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(args.tracking_uri)
    db = sqlite_path(uri)
    if not create and db is not None and not db.is_file():
        raise AdaptError(f"no MLflow store at {db} (run adapt retrain --register NAME here first, or pass --tracking-uri)")
    quiet_http_retries(args)
    preflight(uri)
    return mlflow_client(uri), uri


def run_list(args: argparse.Namespace) -> int:
    from adapt.tracking.registry import list_versions

    client, uri = _client(args)
    rows = list_versions(client, args.name)
    if not rows:
        print(f"no registered models in {uri}" if not args.name else f"no versions of '{args.name}' in {uri}")
        return 0
    print(format_table(rows))
    return 0


def format_table(rows) -> str:
    from adapt.tracking.ui import metric_value

    header = ["NAME", "VERSION", "ALIASES", *(m.upper() for m in METRIC_COLUMNS), "METHOD", "SHOTS", "DATA (FINGERPRINT)", "CREATED"]
    table = [header]
    for r in rows:
        t = r.tags
        values = [metric_value(t, m) for m in METRIC_COLUMNS]  # test/<metric>, or <metric> on older versions
        metrics = ["-" if v is None else f"{v:.4f}" for v in values]
        data = f"{t.get('dataset', '-')} ({t.get('dataset_fingerprint', '-')[:8]})"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_ms / 1000)) if r.created_ms else "-"
        table.append([r.name, r.version, ",".join(r.aliases) or "-", *metrics, t.get("method", "-"), t.get("shots", "-"), data, created])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def run_promote(args: argparse.Namespace) -> int:
    from adapt.errors import AdaptError
    from adapt.tracking.registry import CHAMPION, promote

    if not args.version.isdigit():
        raise AdaptError(f"VERSION must be a version number, got '{args.version}'")
    client, uri = _client(args)
    previous = promote(client, uri, args.name, args.version, args.alias, args.reason)
    was = f"was version {previous}" if previous else "was unset"
    print(f"{args.alias}: {args.name} version {args.version} ({was})")
    if args.alias == CHAMPION:
        print(f"servers following models:/{args.name}@{CHAMPION} pick it up at their next poll")
    return 0


def run_log(args: argparse.Namespace) -> int:
    from adapt.errors import AdaptError
    from adapt.tracking.registry import validate_model_name
    from adapt.pipelines.retrain_tracking import load_retrain_result, log_retrain_result, run_name_for
    from adapt.tracking.runs import start_run
    from adapt.tracking.store import TrackingError, default_experiment

    from adapt.contract.model_uri import ONNX_FILE

    if not (Path(args.run_dir) / ONNX_FILE).is_file():  # before load_retrain_result imports torch
        raise AdaptError(f"{args.run_dir} is not an adapt retrain output folder (no {ONNX_FILE})")
    result = load_retrain_result(args.run_dir)
    if args.register:
        validate_model_name(args.register)
    _, uri = _client(args, create=True)
    history = _history(result.output_dir)
    experiment = args.experiment or default_experiment("retrain", str(result.params.get("dataset") or result.metrics.get("dataset") or "data"))
    run = start_run(uri, experiment, run_name_for(result.params), result.params, tags={"adapt.logged_later": "true"}, command="retrain")
    try:
        if result.dataset_fingerprint:
            dataset = str(result.params.get("dataset") or result.metrics.get("dataset") or "data")
            run.log_dataset(dataset, result.dataset_fingerprint, dataset, {"test": int(result.metrics.get("n", 0))})
        outcome = log_retrain_result(run, result, args.register, args.promote_metric, history=history)
    except TrackingError as exc:
        run.end_quietly("FAILED")
        raise AdaptError(str(exc)) from exc
    print("\n".join(outcome.lines()))
    return 0


def _history(folder) -> list[dict]:
    import json

    from adapt.pipelines.retrain import RUN_FILE

    try:
        return list(json.loads((folder / RUN_FILE).read_text()).get("history") or [])
    except (OSError, ValueError):
        return []

