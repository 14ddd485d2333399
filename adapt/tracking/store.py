"""The MLflow tracking store: which one (``resolve_tracking_uri``: ``--tracking-uri`` >
``MLFLOW_TRACKING_URI`` > the embedded ``sqlite:///mlflow.db``), a client bound to it, and
``preflight``: fail in seconds, before any work, when the store cannot be reached; it also marks
RUNNING runs of this host whose process is gone (``kill -9``) as KILLED.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from adapt.contract.model_uri import tracking_uri_or_default
from adapt.errors import AdaptError, first_line  # noqa: F401  (first_line: part of this module's API)

logger = logging.getLogger(__name__)


PREFLIGHT_TIMEOUT_S = 5
RUN_HTTP_MAX_RETRIES = "2"  # during a run: a dropped server fails in seconds, not after minutes of backoff
HOST_TAG, PID_TAG, PID_START_TAG = "adapt.host", "adapt.pid", "adapt.pid_start"


class TrackingError(AdaptError):
    """The MLflow tracking store or registry could not be used; the message is one line."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri`` if given, else ``MLFLOW_TRACKING_URI``, else the embedded ``sqlite:///mlflow.db``.

    A relative sqlite path is made absolute (relative to the working directory now), so the
    printed URIs and commands work from anywhere.
    """
    uri = tracking_uri_or_default(uri)
    db = sqlite_path(uri)
    if db is not None and not db.expanduser().is_absolute():
        query = uri.partition("?")[1:]
        uri = f"sqlite:///{Path.cwd() / db}" + "".join(query)
    return uri


def default_experiment(kind: str, dataset: str) -> str:
    """Experiment name when none is given: one per command kind and dataset, e.g. ``retrain-elpv``."""
    return f"{kind}-{dataset}"


def mlflow_client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths are relative to the working directory)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])


def is_remote(tracking_uri: str) -> bool:
    return urlparse(tracking_uri).scheme in ("http", "https")


@contextlib.contextmanager
def environ(**values: str):
    """Set environment variables for the duration of a block, then restore them. MLflow reads its
    client settings (HTTP retries and timeouts, progress bars) only from the environment; this is
    the one place adapt changes them, never for longer than the block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def quick_requests(timeout_s: int = PREFLIGHT_TIMEOUT_S):
    """MLflow HTTP calls inside this block: no retries and a short timeout."""
    return environ(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(int(timeout_s)))


def run_requests(tracking_uri: str):
    """MLflow HTTP calls of a run inside this block: few retries (``RUN_HTTP_MAX_RETRIES``), so a
    tracking server that drops mid-run costs seconds, not minutes of backoff. A value the user set
    in ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` wins; stores that are not servers are left alone."""
    if not is_remote(tracking_uri) or "MLFLOW_HTTP_REQUEST_MAX_RETRIES" in os.environ:
        return contextlib.nullcontext()
    return environ(MLFLOW_HTTP_REQUEST_MAX_RETRIES=RUN_HTTP_MAX_RETRIES)


def preflight(tracking_uri: str, timeout_s: int = PREFLIGHT_TIMEOUT_S) -> None:
    """Check, in a few seconds, that the tracking store answers; ``TrackingError`` with a one-line reason if not.

    Call it before any data loading or training.
    """
    hint = "start it, pass another --tracking-uri, or run with --no-tracking"
    if is_remote(tracking_uri):
        try:
            with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise TrackingError(f"MLflow tracking server {tracking_uri} answers HTTP {exc.code}; {hint}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"cannot reach MLflow tracking server {tracking_uri} ({reason}); {hint}") from exc
    elif (db := sqlite_path(tracking_uri)) is not None:
        try:
            db.expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"cannot create the MLflow store {db}: {exc.strerror or exc}") from exc
    try:
        with quick_requests(timeout_s):
            mlflow_client(tracking_uri).search_experiments(max_results=1)
    except Exception as exc:  # MlflowException, requests/sqlalchemy errors
        raise TrackingError(f"MLflow tracking store {tracking_uri} is not usable ({first_line(exc)}); {hint}") from exc
    mark_dead_runs(tracking_uri)


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux: clock ticks since boot), to tell a reused PID apart; None if unknown.
    A zombie (killed, not yet reaped) counts as gone: returns ``"zombie"``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # fields 3.. of proc(5); the command name may hold spaces
    return "zombie" if fields[0] == "Z" else fields[19]


def _process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        pass
    now = process_start(pid)
    return now != "zombie" and (not started or now is None or now == started)


def mark_dead_runs(tracking_uri: str) -> list[str]:
    """Mark KILLED the RUNNING runs that a process on this host started and that process is gone
    (``kill -9``, out of memory, power loss); one warning line says so. Returns their run ids.
    Never raises: this is housekeeping on the way to the real work."""
    host = socket.gethostname()
    try:
        client = mlflow_client(tracking_uri)
        with quick_requests():
            experiments = [e.experiment_id for e in client.search_experiments()]
            running = client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=1000) if experiments else []
            dead = []
            for run in running:
                tags = run.data.tags
                if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
                    continue
                if not _process_alive(int(tags[PID_TAG]), tags.get(PID_START_TAG)):
                    client.set_tag(run.info.run_id, "adapt.end_reason", f"process {tags[PID_TAG]} ended without finishing the run")
                    client.set_terminated(run.info.run_id, "KILLED")
                    dead.append(run)
    except Exception as exc:
        logger.debug("could not look for MLflow runs left RUNNING by dead processes: %s", first_line(exc))
        return []
    if dead:
        names = ", ".join(f"{r.info.run_name or '?'} ({r.info.run_id[:8]})" for r in dead[:3]) + (", ..." if len(dead) > 3 else "")
        logger.warning("marked %d MLflow run(s) KILLED: their process on %s is gone without finishing them: %s", len(dead), host, names)
    return [r.info.run_id for r in dead]
