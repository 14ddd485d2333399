"""A retrain in MLflow: ``RetrainTracker`` plugs into ``adapt.pipelines.retrain.RunHooks``.

``log_retrain_result`` logs a finished retrain output folder (held-out metrics as ``test/...``,
confusion matrix, metrics JSON, labels, ``model.onnx``, the exported classifier as an MLflow pyfunc
model named after what it is, with the held-out metrics linked to it and to the dataset) and
``register_result`` registers it through the champion gate in ``adapt.tracking.registry``.
``load_retrain_result`` reads a folder back, for ``adapt models log``. Metric names and the texts a
human reads in the UI come from ``adapt.tracking.ui``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from adapt.errors import AdaptError
from adapt.tracking import ui
from adapt.tracking.runs import TrackedRun, log_classifier_model, model_name_for, start_run
from adapt.tracking.store import TrackingError, default_experiment, first_line

if TYPE_CHECKING:  # adapt.pipelines.retrain pulls in torch; `adapt models ...` must not
    from adapt.pipelines.retrain import RetrainResult

logger = logging.getLogger(__name__)


FINAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "needs_review_rate", "accuracy_on_accepted")


def final_metrics(metrics: dict) -> dict[str, float]:
    """The held-out metrics of ``metrics.json`` as flat MLflow metrics under ``test/`` (per-class ones
    as ``test/per_class/<class>/<metric>``)."""
    headline_first = sorted(FINAL_METRICS, key=lambda k: k != ui.HEADLINE_METRIC)  # the UI lists them in this order
    out = {ui.test_metric(k): metrics[k] for k in headline_first if isinstance(metrics.get(k), (int, float))}
    if isinstance(metrics.get("n"), int):
        out[ui.test_metric("images")] = metrics["n"]
    for cls, values in (metrics.get("per_class") or {}).items():
        for k, v in values.items():
            if k != "support":
                out[ui.test_metric(f"per_class/{cls}/{k}")] = v
    for cls, recall in ((metrics.get("anomaly") or {}).get("defect_recall") or {}).items():
        out[ui.test_metric(f"defect_recall/{cls}")] = recall  # anomaly runs: recall of each original defect class
    return {k: round(float(v), ui.TEST_DECIMALS) for k, v in out.items() if isinstance(v, (int, float))}


def load_retrain_result(output_dir: str | Path) -> RetrainResult:
    """A ``RetrainResult`` read back from an ``adapt retrain`` output folder."""
    from adapt.pipelines.retrain import (
        METRICS_FILE,
        MODEL_FILE,
        RUN_FILE,
        TORCH_FILE,
        RetrainResult,
    )

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
    """Tags of a registered version: the held-out metrics (``test/<metric>``, what the gate compares)
    and what they were measured on."""
    m, p = result.metrics, result.params
    tags = {ui.test_metric(k): f"{float(m[k]):.6g}" for k in FINAL_METRICS if isinstance(m.get(k), (int, float))}
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


def run_description(result: RetrainResult, decision=None) -> str:
    """The run's description in the UI (markdown): what was trained, how it scored, what the gate did."""
    tags = {**{k: str(v) for k, v in result.params.items()}, **version_tags(result)}
    text = ui.model_summary(tags) + "."
    if decision is not None:
        why = f"{decision.alias} because {decision.reason}"
        if not decision.moved and decision.previous:
            why = f"{decision.alias}, version {decision.previous} stays champion because {decision.reason}"
        text += f"\n\nRegistered as **{decision.name} version {decision.version}**: {why}."
    return text


@dataclass
class TrackingOutcome:
    run_url: str
    run_id: str
    model_id: str = ""
    decision: object | None = None  # adapt.tracking.registry.GateDecision
    runs_url: str = ""  # the experiment's runs table with the headline columns

    def lines(self) -> list[str]:
        lines = [f"MLflow run: {self.run_url}"]
        if self.runs_url:
            lines.append(f"MLflow runs table: {self.runs_url}")
        if self.decision is not None:
            lines.append(self.decision.summary())
        return lines


def log_retrain_result(
    run: TrackedRun,
    result: RetrainResult,
    register: str | None = None,
    promote_metric: str = ui.HEADLINE_METRIC,
    history: list[dict] | None = None,
) -> TrackingOutcome:
    """Log a finished retrain into ``run`` and end it; then register it through the promotion gate."""
    from adapt.pipelines.retrain import CM_FILE, LABELS_FILE, METRICS_FILE, MODEL_FILE, RISK_FILE, RUN_FILE

    chosen_later = {k: v for k, v in result.params.items() if k not in run.logged_params}  # e.g. chosen.*, reject_threshold
    if chosen_later:
        run.log_params(chosen_later)
    out = result.output_dir
    for name in (METRICS_FILE, CM_FILE, LABELS_FILE, RUN_FILE, RISK_FILE, MODEL_FILE):
        if (out / name).is_file():
            run.log_artifact(out / name)
    run.set_tags({"adapt.output_dir": str(out.resolve()), "dataset_fingerprint": result.dataset_fingerprint,
                  ui.NOTE_TAG: run_description(result)})
    model_params = {k: v for k, v in result.params.items() if not isinstance(v, (list, dict))}
    model_id = log_classifier_model(run, result.model_path, result.classifier_path, name=model_name_for(result.params), params=model_params,
                                    description=run_description(result))
    # the held-out metrics: the run's, and the logged model's on the dataset it was evaluated on
    dataset = (str(result.params.get("dataset") or result.metrics.get("dataset") or "data"), result.dataset_fingerprint)
    run.log_metrics(final_metrics(result.metrics), model_id=model_id, dataset=dataset if result.dataset_fingerprint else None)
    for i, entry in enumerate(history or []):  # after the headline: the UI lists a run's metrics in the order logged
        run.log_metrics({ui.curve_metric(k, ui.VAL): v for k, v in entry.items() if k != "epoch"}, step=int(entry.get("epoch", i)))
    run.log_metrics({f"{ui.TIME}/{k}": v for k, v in result.timings.items()})
    run.end("FINISHED")
    outcome = TrackingOutcome(run.url, run.run_id, model_id, runs_url=run.experiment_url)
    if register:
        register_result(run, outcome, result, register, promote_metric)
    return outcome


def register_result(run: TrackedRun, outcome: TrackingOutcome, result: RetrainResult, name: str, promote_metric: str) -> None:
    """Register the run's logged model as a version of ``name`` and put it through the champion gate."""
    from adapt.tracking.registry import gate, register_version

    with run.requests():
        version = register_version(run.client, name, outcome.model_id, run.run_id, version_tags(result))
        outcome.decision = gate(run.client, run.tracking_uri, name, version, promote_metric)
        run.set_tags({ui.NOTE_TAG: run_description(result, outcome.decision)})


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
    """``adapt.pipelines.retrain.RunHooks`` that track one retrain in MLflow and register it.

    Errors before training (``started``) raise ``TrackingError``. After training nothing raises:
    the output folder is already complete, so a failure is kept in ``failure`` (one line, with
    the command that logs the folder later) for the caller to report.
    """

    def __init__(self, tracking_uri: str, experiment: str | None = None, register: str | None = None, promote_metric: str = ui.HEADLINE_METRIC) -> None:
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.register, self.promote_metric = register, promote_metric
        self.run: TrackedRun | None = None
        self.outcome: TrackingOutcome | None = None
        self.failure: str | None = None
        self.search: list[dict] = []  # values a method reported while choosing on the val split, logged after the headline

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
        from adapt.training.mlflow_logger import run_logger

        return [run_logger(self.run)] if self.run and not self.run.broken else []

    def metrics(self, values: dict[str, float], step: int) -> None:
        """Values from loops that are not Lightning's (a hyper-parameter search on the val split: seconds,
        not a curve to watch live); kept and logged with the results, after the held-out metrics,
        because the UI lists a run's metrics in the order they were logged."""
        if self.run is not None:
            self.search.append({**values, "epoch": step})

    def finished(self, result: RetrainResult) -> None:
        if self.run is None:
            return
        later = log_later_command(result.output_dir, self.tracking_uri, self.register, self.experiment)
        try:
            if self.run.broken:
                raise TrackingError(f"MLflow at {self.tracking_uri} failed during training: {self.run.broken}")
            self.outcome = log_retrain_result(self.run, result, history=self.search)
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
