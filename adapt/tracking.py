"""MLflow tracking: one MLflow run per ``adapt retrain`` / ``adapt pretrain``.

The reusable part is small: ``resolve_tracking_uri`` (``--tracking-uri`` > ``MLFLOW_TRACKING_URI``
> the embedded ``sqlite:///mlflow.db``), ``preflight`` (fail in seconds, before any work, when
the store cannot be reached) and ``start_run`` -> ``TrackedRun`` (params, metrics, artifacts, a
Lightning logger bound to the run, ``end``). Everything goes through an ``MlflowClient`` bound
to the given URI; no fluent (global) run is started. Experiments are tagged as classic ML
(``mlflow.experimentKind``) so the UI opens on their runs; runs carry host + PID tags, and
``preflight`` marks RUNNING runs of this host whose process is gone (``kill -9``) as KILLED.

The retrain part: ``RetrainTracker`` plugs into ``adapt.retrain.RunHooks``; ``log_retrain_result``
logs a finished retrain output folder (final metrics, confusion matrix, metrics JSON, labels, the
exported classifier as an MLflow pyfunc model) and registers it through the promotion gate in
``adapt.registry``. Registered versions, aliases and the gate live in ``adapt.registry``.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import logging
import math
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from adapt import __version__
from adapt.errors import AdaptError

if TYPE_CHECKING:  # adapt.retrain pulls in torch; `adapt models ...` must not
    from adapt.retrain import RetrainResult

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PREFLIGHT_TIMEOUT_S = 5
RUN_HTTP_MAX_RETRIES = "2"  # during a run: a dropped server fails in seconds, not after minutes of backoff
MODEL_NAME_IN_RUN = "classifier"  # name of the logged MLflow model in the run
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"  # MLflow 3 UI: a runs page
HOST_TAG, PID_TAG, PID_START_TAG = "adapt.host", "adapt.pid", "adapt.pid_start"
_MAX_PARAM_CHARS = 6000
_METRIC_NAME_BAD = re.compile(r"[^\w\-./ ]")


class TrackingError(AdaptError):
    """The MLflow tracking store or registry could not be used; the message is one line."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri`` if given, else ``MLFLOW_TRACKING_URI``, else the embedded ``sqlite:///mlflow.db``.

    A relative sqlite path is made absolute (relative to the working directory now), so the
    printed URIs and commands work from anywhere.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    db = sqlite_path(uri)
    if db is not None and not db.expanduser().is_absolute():
        query = uri.partition("?")[1:]
        uri = f"sqlite:///{Path.cwd() / db}" + "".join(query)
    return uri


def default_experiment(kind: str, dataset: str) -> str:
    """Experiment name when none is given: one per command kind and dataset, e.g. ``retrain-elpv``."""
    return f"{kind}-{dataset}"


_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


def first_line(exc: BaseException) -> str:
    """A short one-line reason for ``exc`` (connection failures boiled down to their errno text)."""
    text = str(exc).strip()
    if "Max retries exceeded" in text or "Failed to establish a new connection" in text:
        errno = _ERRNO.search(text)
        return f"connection failed ({errno.group(0).strip() if errno else 'server unreachable'})"
    if "Read timed out" in text:
        return "the server did not answer in time (read timed out)"
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


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
    """Set environment variables (MLflow reads its settings from them) for the duration of a block."""
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


def preflight(tracking_uri: str, timeout_s: int = PREFLIGHT_TIMEOUT_S) -> None:
    """Check, in a few seconds, that the tracking store answers; ``TrackingError`` with a one-line reason if not.

    Call it before any data loading or training. For remote servers it also caps MLflow's HTTP
    retries for the rest of the process (unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` is set), so a
    server that drops mid-run costs seconds, not minutes of backoff.
    """
    hint = "start it, pass another --tracking-uri, or run with --no-tracking"
    if is_remote(tracking_uri):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", RUN_HTTP_MAX_RETRIES)
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


def _process_start(pid: int) -> str | None:
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
    now = _process_start(pid)
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


@functools.cache
def _git_commit() -> tuple[str, bool] | None:
    """(commit, dirty) of the git checkout this package runs from, if it runs from one."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5
        )
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def run_tags(command: str) -> dict[str, str]:
    """Provenance tags of every run: command, adapt version, host, user, git commit if known."""
    tags = {
        "adapt.command": command,
        "adapt.version": __version__,
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        "mlflow.source.name": f"adapt {command}",
        "mlflow.source.type": "LOCAL",
    }
    if (started := _process_start(os.getpid())) is not None:
        tags[PID_START_TAG] = started
    with contextlib.suppress(Exception):
        tags["mlflow.user"] = getpass.getuser()
    git = _git_commit()
    if git:
        tags["mlflow.source.git.commit"] = tags["adapt.git_commit"] = git[0]
        tags["adapt.git_dirty"] = str(git[1]).lower()
    return tags


def _experiment_id(client, name: str, tracking_uri: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None
        if (db := sqlite_path(tracking_uri)) is not None:  # artifacts beside the database
            slug = re.sub(r"[^\w.-]+", "_", name).strip("._") or "experiment"
            location = (db.expanduser().resolve().parent / "mlruns" / slug).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # created concurrently by another run
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment '{name}' is deleted; restore it in the MLflow UI or pass another --experiment")
    if EXPERIMENT_KIND_TAG not in exp.tags:  # made before we tagged, or by someone else: still classic ML
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def _param_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def _metric_name(key: str) -> str:
    return _METRIC_NAME_BAD.sub("_", key)


@dataclass
class TrackedRun:
    """One MLflow run, written through a client bound to ``tracking_uri``.

    Every method raises ``TrackingError`` on failure, except that once ``broken`` is set (the
    store dropped mid-run while Lightning was logging), curve logging is skipped silently.
    """

    client: object
    tracking_uri: str
    run_id: str
    experiment_id: str
    experiment_name: str
    broken: str | None = None  # first error while logging curves
    logged_params: set[str] = field(default_factory=set)  # MLflow params are write-once

    @property
    def url(self) -> str:
        """Where to look at the run: the UI address for servers, else the run id and the UI command."""
        if is_remote(self.tracking_uri):
            return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"{self.run_id} in experiment '{self.experiment_name}' (view: mlflow ui --backend-store-uri {self.tracking_uri})"

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(f"MLflow {what} failed at {self.tracking_uri}: {first_line(exc)}") from exc

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call("logging params", self.client.log_batch, self.run_id, params=items[i : i + 100])
        self.logged_params.update(str(k) for k in params)

    def log_metrics(self, values: dict, step: int = 0) -> None:
        """Log the finite numeric entries of ``values`` at ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(_metric_name(str(k)), float(v), now, int(step))
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 1000):
            self._call("logging metrics", self.client.log_batch, self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        self._call("setting tags", self.client.log_batch, self.run_id, tags=items)

    def log_dataset(self, name: str, digest: str, source: str, profile: dict, context: str = "training") -> None:
        """The run's dataset input (what the MLflow runs table shows in its Dataset column)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        dataset = Dataset(name, digest, "local", json.dumps({"uri": source}), profile=json.dumps(profile))
        inputs = [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])]
        self._call("logging the dataset", self.client.log_inputs, self.run_id, datasets=inputs)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("artifact upload", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def lightning_logger(self):
        """A Lightning ``MLFlowLogger`` writing into this run (it neither starts nor ends the run,
        and a logging failure mid-training marks the run ``broken`` instead of stopping training)."""
        return _run_bound_logger_class()(self)

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED / FAILED / KILLED."""
        self._call("ending the run", self.client.set_terminated, self.run_id, status)

    def end_quietly(self, status: str = "FAILED") -> None:
        """``end`` when the store may be gone: errors are logged, not raised."""
        try:
            with quick_requests():
                self.client.set_terminated(self.run_id, status)
        except Exception as exc:
            logger.debug("could not mark MLflow run %s %s: %s", self.run_id, status, exc)

    def mark_broken(self, exc: BaseException) -> None:
        if self.broken is None:
            self.broken = first_line(exc)
            logger.warning("MLflow logging stopped (%s); training goes on, results stay in the output folder", self.broken)


def start_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    params: dict | None = None,
    tags: dict | None = None,
    command: str = "retrain",
) -> TrackedRun:
    """Create a run in ``experiment`` (created if missing) with ``params`` and provenance tags."""
    client = mlflow_client(tracking_uri)
    try:
        exp_id = _experiment_id(client, experiment, tracking_uri)
        run = client.create_run(exp_id, run_name=run_name, tags={**run_tags(command), **(tags or {})})
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"cannot start an MLflow run at {tracking_uri}: {first_line(exc)}") from exc
    tracked = TrackedRun(client, tracking_uri, run.info.run_id, exp_id, experiment)
    if params:
        tracked.log_params(params)
    return tracked


@functools.cache
def _run_bound_logger_class():
    from lightning.pytorch.loggers import MLFlowLogger
    from lightning.pytorch.loggers.logger import rank_zero_experiment
    from lightning.pytorch.utilities import rank_zero_only

    class RunBoundMLFlowLogger(MLFlowLogger):
        """``MLFlowLogger`` bound to an existing ``TrackedRun``."""

        def __init__(self, run: TrackedRun) -> None:
            super().__init__(experiment_name=run.experiment_name, tracking_uri=run.tracking_uri, run_id=run.run_id, log_model=False)
            self._tracked = run
            self._mlflow_client = run.client

        @property
        @rank_zero_experiment
        def experiment(self):
            # MLFlowLogger's own version calls mlflow.set_tracking_uri(), which also rewrites
            # $MLFLOW_TRACKING_URI for the whole process; the run exists already, so skip that.
            if not self._initialized:
                self._experiment_id, self._initialized = self._tracked.experiment_id, True
            return self._mlflow_client

        @rank_zero_only
        def log_hyperparams(self, params) -> None:  # params are logged once by the caller
            pass

        @rank_zero_only
        def log_metrics(self, metrics, step=None) -> None:
            if self._tracked.broken:
                return
            try:
                super().log_metrics(metrics, step)
            except Exception as exc:
                self._tracked.mark_broken(exc)

        @rank_zero_only
        def finalize(self, status: str = "success") -> None:  # the run outlives the Trainer
            pass

    return RunBoundMLFlowLogger


# ---------------------------------------------------------------- the exported classifier as an MLflow model


def _onnx_metadata(onnx_path: Path):
    import onnx

    from adapt.modelmeta import METADATA_KEY, ClassifierMetadata

    model = onnx.load(str(onnx_path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return ClassifierMetadata.from_json(prop.value)
    raise TrackingError(f"{onnx_path} has no adapt classifier metadata")


def log_classifier_model(run: TrackedRun, onnx_path: str | Path, torch_path: str | Path | None = None) -> str:
    """Log the exported classifier into ``run`` as an MLflow pyfunc model; returns its model id.

    The model directory holds ``artifacts/model.onnx`` (what the pyfunc serves and what the gRPC
    service looks for) and ``artifacts/classifier.pt`` (for ``adapt export --model models:/...``).
    """
    import mlflow
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    import adapt.mlflow_model as model_code

    onnx_path = Path(onnx_path)
    meta = _onnx_metadata(onnx_path)
    labels = meta.labels
    artifacts = {model_code.ONNX_ARTIFACT: str(onnx_path.resolve())}
    if torch_path is not None and Path(torch_path).is_file():
        artifacts[model_code.TORCH_ARTIFACT] = str(Path(torch_path).resolve())
    client = run.client
    lm = run._call("creating the logged model", client.create_logged_model, run.experiment_id, name=MODEL_NAME_IN_RUN, source_run_id=run.run_id)
    try:
        with tempfile.TemporaryDirectory(prefix="adapt-mlflow-model-") as tmp, environ(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
            local = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                str(local),
                python_model=model_code.__file__,
                artifacts=artifacts,
                signature=model_code.signature_for(labels),
                input_example=model_code.input_example(meta.image_size),
                pip_requirements=[f"mlflow=={mlflow.__version__}", "onnxruntime", "numpy", "pandas", "pillow", f"adapt-fewshot=={__version__}"],
                mlflow_model=Model(artifact_path=lm.artifact_location, run_id=run.run_id, model_uuid=lm.model_id, model_id=lm.model_id),
                metadata={"adapt.labels": labels, "adapt.input": "DataFrame column 'image': base64-encoded image files"},
            )
            run._call("uploading the model", client.log_model_artifacts, lm.model_id, str(local))
        run._call("finalizing the model", client.finalize_logged_model, lm.model_id, "READY")
        run._call("linking the model to the run", client.log_outputs, run.run_id, [LoggedModelOutput(lm.model_id, step=0)])
    except Exception:
        with contextlib.suppress(Exception), quick_requests():
            client.finalize_logged_model(lm.model_id, "FAILED")
        raise
    return lm.model_id


# ---------------------------------------------------------------- retrain results


FINAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "needs_review_rate", "accuracy_on_accepted")


def final_metrics(metrics: dict) -> dict[str, float]:
    """The held-out metrics as flat MLflow metrics (per-class ones as ``per_class/<class>/<metric>``)."""
    out = {k: metrics[k] for k in FINAL_METRICS if isinstance(metrics.get(k), (int, float))}
    if isinstance(metrics.get("n"), int):
        out["test_images"] = metrics["n"]
    for cls, values in (metrics.get("per_class") or {}).items():
        for k, v in values.items():
            if k != "support":
                out[f"per_class/{cls}/{k}"] = v
    for cls, recall in ((metrics.get("anomaly") or {}).get("defect_recall") or {}).items():
        out[f"defect_recall/{cls}"] = recall  # anomaly runs: recall of each original defect class
    return out


def load_retrain_result(output_dir: str | Path) -> RetrainResult:
    """A ``RetrainResult`` read back from an ``adapt retrain`` output folder."""
    from adapt.retrain import METRICS_FILE, MODEL_FILE, RUN_FILE, TORCH_FILE, RetrainResult

    out = Path(output_dir)
    missing = [n for n in (MODEL_FILE, METRICS_FILE) if not (out / n).is_file()]
    if missing:
        raise AdaptError(f"{out} is not an adapt retrain output folder (missing {', '.join(missing)})")
    metrics = json.loads((out / METRICS_FILE).read_text())
    record = json.loads((out / RUN_FILE).read_text()) if (out / RUN_FILE).is_file() else {}
    return RetrainResult(
        output_dir=out,
        metrics=metrics,
        params=record.get("params") or {k: metrics[k] for k in ("method", "shots", "seed", "dataset", "dataset_fingerprint") if k in metrics},
        model_path=out / MODEL_FILE,
        classifier_path=out / TORCH_FILE,
        dataset_fingerprint=str(metrics.get("dataset_fingerprint", "")),
        timings=record.get("timings") or {},
    )


def run_name_for(params: dict) -> str:
    return f"{params.get('method', 'run')}-{params.get('shots', '?')}shot-seed{params.get('seed', '?')}"


def version_tags(result: RetrainResult) -> dict[str, str]:
    """Tags of a registered version: the eval metrics and what they were measured on."""
    m, p = result.metrics, result.params
    tags = {k: f"{float(m[k]):.6g}" for k in FINAL_METRICS if isinstance(m.get(k), (int, float))}
    tags["dataset_fingerprint"] = result.dataset_fingerprint
    for key in ("dataset", "method", "shots", "seed"):
        if key in m or key in p:
            tags[key] = str(m.get(key, p.get(key)))
    for key in ("backbone", "backbone_weights"):
        if key in p:
            tags[key] = str(p[key])
    if isinstance(m.get("n"), int):
        tags["test_images"] = str(m["n"])
    return tags


@dataclass
class TrackingOutcome:
    run_url: str
    run_id: str
    model_id: str = ""
    decision: object | None = None  # adapt.registry.GateDecision

    def lines(self) -> list[str]:
        lines = [f"MLflow run: {self.run_url}"]
        if self.decision is not None:
            lines.append(self.decision.summary())
        return lines


def log_retrain_result(
    run: TrackedRun,
    result: RetrainResult,
    register: str | None = None,
    promote_metric: str = "balanced_accuracy",
    history: list[dict] | None = None,
) -> TrackingOutcome:
    """Log a finished retrain into ``run`` and end it; then register it through the promotion gate."""
    from adapt.retrain import CM_FILE, LABELS_FILE, METRICS_FILE, RUN_FILE

    chosen_later = {k: v for k, v in result.params.items() if k not in run.logged_params}  # e.g. chosen.*, reject_threshold
    if chosen_later:
        run.log_params(chosen_later)
    for i, entry in enumerate(history or []):
        run.log_metrics({k: v for k, v in entry.items() if k != "epoch"}, step=int(entry.get("epoch", i)))
    run.log_metrics(final_metrics(result.metrics))
    run.log_metrics({f"time/{k}": v for k, v in result.timings.items()})
    out = result.output_dir
    for name in (METRICS_FILE, CM_FILE, LABELS_FILE, RUN_FILE):
        if (out / name).is_file():
            run.log_artifact(out / name)
    run.set_tags({"adapt.output_dir": str(out.resolve()), "dataset_fingerprint": result.dataset_fingerprint})
    model_id = log_classifier_model(run, result.model_path, result.classifier_path)
    run.end("FINISHED")
    outcome = TrackingOutcome(run.url, run.run_id, model_id)
    if register:
        register_result(run, outcome, result, register, promote_metric)
    return outcome


def register_result(run: TrackedRun, outcome: TrackingOutcome, result: RetrainResult, name: str, promote_metric: str) -> None:
    """Register the run's logged model as a version of ``name`` and put it through the champion gate."""
    from adapt.registry import gate, register_version

    version = register_version(run.client, name, outcome.model_id, run.run_id, version_tags(result))
    outcome.decision = gate(run.client, run.tracking_uri, name, version, promote_metric)


def log_later_command(output_dir: Path, tracking_uri: str, register: str | None, experiment: str | None) -> str:
    parts = ["adapt models log", _quote(str(output_dir)), "--tracking-uri", _quote(tracking_uri)]
    if experiment:
        parts += ["--experiment", _quote(experiment)]
    if register:
        parts += ["--register", _quote(register)]
    return " ".join(parts)


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


class RetrainTracker:
    """``adapt.retrain.RunHooks`` that track one retrain in MLflow and register it.

    Errors before training (``started``) raise ``TrackingError``. After training nothing raises:
    the output folder is already complete, so a failure is kept in ``failure`` (one line, with
    the command that logs the folder later) for the caller to report.
    """

    def __init__(self, tracking_uri: str, experiment: str | None = None, register: str | None = None, promote_metric: str = "balanced_accuracy") -> None:
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.register, self.promote_metric = register, promote_metric
        self.run: TrackedRun | None = None
        self.outcome: TrackingOutcome | None = None
        self.failure: str | None = None

    def started(self, params: dict) -> None:
        self.experiment = self.experiment or default_experiment("retrain", str(params.get("dataset", "data")))
        self.run = start_run(self.tracking_uri, self.experiment, run_name_for(params), params, command="retrain")

    def dataset(self, name: str, fingerprint: str, source: str, counts: dict[str, int]) -> None:
        if self.run is None:
            return
        try:
            self.run.log_dataset(name, fingerprint, source, counts)
        except TrackingError as exc:  # the run still has the fingerprint as a param
            logger.warning("%s", exc)

    def lightning_loggers(self) -> list:
        return [self.run.lightning_logger()] if self.run and not self.run.broken else []

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.run is None or self.run.broken:
            return
        try:
            self.run.log_metrics(values, step)
        except TrackingError as exc:
            self.run.mark_broken(exc)

    def finished(self, result: RetrainResult) -> None:
        if self.run is None:
            return
        later = log_later_command(result.output_dir, self.tracking_uri, self.register, self.experiment)
        try:
            if self.run.broken:
                raise TrackingError(f"MLflow at {self.tracking_uri} failed during training: {self.run.broken}")
            self.outcome = log_retrain_result(self.run, result)
        except Exception as exc:
            logger.debug("tracking failed after training", exc_info=True)
            self.run.end_quietly("FAILED")
            self.failure = f"{first_line(exc)}; the model and metrics are in {result.output_dir} -- log them later with: {later}"
            return
        if self.register:
            try:
                register_result(self.run, self.outcome, result, self.register, self.promote_metric)
            except Exception as exc:
                logger.debug("registration failed", exc_info=True)
                self.failure = (f"{first_line(exc)}; run {self.run.run_id} is logged but not registered -- "
                                f"register the folder (as a new run) with: {later}")

    def aborted(self, exc: BaseException) -> None:
        """The retrain stopped with ``exc`` before ``finished``: end the run as FAILED (KILLED on Ctrl-C)."""
        if self.run is not None and self.outcome is None and self.failure is None:
            self.run.end_quietly("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")

    def report(self) -> list[str]:
        """Lines for the user: where the run is and what happened to the champion alias."""
        return self.outcome.lines() if self.outcome else []


def download_registered_model(uri: str, tracking_uri: str | None = None):
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> ``adapt.model_uri.LocalModel`` (see ``adapt.registry``)."""
    from adapt.registry import download_version

    return download_version(uri, tracking_uri)
