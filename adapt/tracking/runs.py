"""One MLflow run per ``adapt retrain`` / ``adapt pretrain``: ``start_run`` -> ``TrackedRun``.

Params, metrics, tags, the dataset input, artifacts, ``end``; provenance tags (host, PID, git
commit, command). Everything goes through an ``MlflowClient`` bound to the given URI; no fluent
(global) run is started. Experiments get a description and the saved view of the headline
columns (``adapt.tracking.ui``). ``log_classifier_model`` logs an exported classifier as a pyfunc
model (``adapt.tracking.pyfunc``) named after what it is, with its params.
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
from dataclasses import dataclass, field
from pathlib import Path

from adapt import __version__
from adapt.contract.modelmeta import read_file
from adapt.tracking import ui
from adapt.tracking.store import (
    HOST_TAG,
    PID_START_TAG,
    PID_TAG,
    TrackingError,
    environ,
    first_line,
    is_remote,
    mlflow_client,
    process_start,
    quick_requests,
    run_requests,
    sqlite_path,
)

logger = logging.getLogger(__name__)

EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = ui.EXPERIMENT_KIND_TAG, ui.EXPERIMENT_KIND
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default
_MAX_PARAM_CHARS = 6000
_METRIC_NAME_BAD = re.compile(r"[^\w\-./ ]")


@functools.cache
def _git_commit() -> tuple[str, bool] | None:
    """(commit, dirty) of the git checkout this package runs from, if it runs from one."""
    root = Path(__file__).resolve().parents[2]  # the folder holding the adapt package
    if not (root / ".git").exists():  # a folder in a clone, a file in a worktree
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
    if (started := process_start(os.getpid())) is not None:
        tags[PID_START_TAG] = started
    with contextlib.suppress(Exception):
        tags["mlflow.user"] = getpass.getuser()
    git = _git_commit()
    if git:
        tags["mlflow.source.git.commit"] = git[0]  # the UI shows it beside the run's source
        tags["adapt.git_dirty"] = str(git[1]).lower()
    return tags


def experiment_tags(command: str) -> dict[str, str]:
    """Tags of an experiment adapt creates: its kind, its description and (retrains) the headline saved view."""
    tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, ui.NOTE_TAG: ui.experiment_description(command)}
    if command == "retrain":
        view_key, view = ui.saved_view_tag()
        tags[view_key] = view
    return tags


def _experiment_id(client, name: str, tracking_uri: str, command: str = "retrain") -> str:
    from mlflow.exceptions import MlflowException

    tags = experiment_tags(command)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None
        if (db := sqlite_path(tracking_uri)) is not None:  # artifacts beside the database
            slug = re.sub(r"[^\w.-]+", "_", name).strip("._") or "experiment"
            location = (db.expanduser().resolve().parent / "mlruns" / slug).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location, tags=tags)
        except MlflowException:  # created concurrently by another run
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment '{name}' is deleted; restore it in the MLflow UI or pass another --experiment")
    for key, value in tags.items():  # made before adapt set these, or by someone else; a user's own text stays
        if key not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, key, value)
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
        """Where to look at the run: the UI address for servers, else the run id, the UI command and the address it serves."""
        if is_remote(self.tracking_uri):
            return ui.run_link(self.tracking_uri, self.experiment_id, self.run_id)
        return (f"{self.run_id} in experiment '{self.experiment_name}' (view: mlflow ui --backend-store-uri {self.tracking_uri}, "
                f"then {ui.run_link(LOCAL_UI, self.experiment_id, self.run_id)})")

    @property
    def experiment_url(self) -> str:
        """The experiment's runs with the headline columns (for a local store: where `mlflow ui` serves it)."""
        return ui.experiment_link(self.tracking_uri if is_remote(self.tracking_uri) else LOCAL_UI, self.experiment_id)

    def requests(self):
        """MLflow calls for this run inside this block: a dropped server fails in seconds (``run_requests``)."""
        return run_requests(self.tracking_uri)

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            with self.requests():
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

    def log_metrics(self, values: dict, step: int = 0, model_id: str | None = None, dataset: tuple[str, str] | None = None) -> None:
        """Log the finite numeric entries of ``values`` at ``step``; with ``model_id`` (and ``dataset``,
        (name, digest)) they are also the metrics of that logged model, measured on that dataset."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        name, digest = dataset or (None, None)
        items = [
            Metric(_metric_name(str(k)), float(v), now, int(step), model_id=model_id, dataset_name=name, dataset_digest=digest)
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 1000):
            self._call("logging metrics", self.client.log_batch, self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        self._call("setting tags", self.client.log_batch, self.run_id, tags=items)

    def log_dataset(self, name: str, digest: str, source: str, profile: dict, context: str = "train+test") -> None:
        """The run's dataset input (what the MLflow runs table shows in its Dataset column); ``context``
        says what the run used it for (adapt retrain: the few-shot train pool and the held-out test split)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name, digest, "local", json.dumps({"uri": source}), profile=json.dumps(profile))
        inputs = [DatasetInput(dataset, [InputTag(ui.DATASET_CONTEXT_TAG, context)])]
        self._call("logging the dataset", self.client.log_inputs, self.run_id, datasets=inputs)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("artifact upload", self.client.log_artifact, self.run_id, str(path), artifact_path)

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
        with run_requests(tracking_uri):
            exp_id = _experiment_id(client, experiment, tracking_uri, command)
            run = client.create_run(exp_id, run_name=run_name, tags={**run_tags(command), **(tags or {})})
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"cannot start an MLflow run at {tracking_uri}: {first_line(exc)}") from exc
    tracked = TrackedRun(client, tracking_uri, run.info.run_id, exp_id, experiment)
    if params:
        tracked.log_params(params)
    return tracked


def model_name_for(params: dict) -> str:
    """The logged model's name: what it is, e.g. ``parts-linear-16shot-seed1``."""
    text = f"{params.get('dataset', 'data')}-{params.get('method', 'model')}-{params.get('shots', '?')}shot-seed{params.get('seed', '?')}"
    return re.sub(r"[^\w.+-]+", "_", text)


def log_classifier_model(run: TrackedRun, onnx_path: str | Path, torch_path: str | Path | None = None,
                         name: str = "classifier", params: dict | None = None, description: str = "") -> str:
    """Log the exported classifier into ``run`` as an MLflow pyfunc model called ``name`` with
    ``params`` (what it is) and ``description`` (shown on its page); returns its model id.

    The model directory holds ``artifacts/model.onnx`` (what the pyfunc serves and what the gRPC
    service looks for) and ``artifacts/classifier.pt`` (for ``adapt export --model models:/...``).
    """
    import mlflow
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    import adapt.tracking.pyfunc as model_code

    onnx_path = Path(onnx_path)
    meta = read_file(onnx_path)
    labels = meta.labels
    artifacts = {model_code.ONNX_ARTIFACT: str(onnx_path.resolve())}
    if torch_path is not None and Path(torch_path).is_file():
        artifacts[model_code.TORCH_ARTIFACT] = str(Path(torch_path).resolve())
    client = run.client
    model_params = {str(k): _param_value(v) for k, v in (params or {}).items()}
    lm = run._call("creating the logged model", client.create_logged_model, run.experiment_id, name=name,
                   source_run_id=run.run_id, params=model_params or None, tags={ui.NOTE_TAG: description} if description else None)
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
