"""What a quality engineer sees in the MLflow 3 UI: metric names grouped by split, the saved view
that puts the headline columns in the runs table, links that open it, and the texts (experiment,
run and version descriptions) a human reads, with rounded values.

Found in MLflow 3.17.2's UI code (``mlflow/server/js/build``), not configurable on the server:

- Whether the UI shows an experiment as classic ML (runs, models) or GenAI (traces) follows the
  workspace switch "GenAI / Model training" at the top of the sidebar, which the browser remembers
  (localStorage ``mlflow.workflowType``, default GenAI); the experiment tag ``mlflow.experimentKind``
  is not read by this UI version. A link with ``?workflowType=machine_learning`` opens a page in
  "Model training" mode, so every link adapt prints carries it.
- The runs table shows Run Name, Created, Dataset, Duration, Source and Models unless the browser
  has a stored column choice. A per-experiment column choice exists only as a *saved view*: an
  experiment tag ``mlflow.sharedViewState.<id>`` listed under the experiment's "Views" menu and
  opened by ``?viewStateShareKey=<id>``. adapt writes one, ``headline``, into every experiment it
  creates or uses.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

# --- metric names: <split>/<name>, so the UI groups them; the held-out test split sorts first
TEST, VAL, TRAIN, TIME = "test", "val", "train", "time"
HEADLINE_METRIC = "balanced_accuracy"  # what the champion gate compares by default (metrics.json key)

# --- the experiment's saved view and the links to it
WORKFLOW_QUERY = "workflowType=machine_learning"  # "Model training" mode of the MLflow 3 UI
SAVED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # experiment tags the UI lists under "Views"
SAVED_VIEW_ID, SAVED_VIEW_NAME = "headline", "Headline metrics"
NOTE_TAG = "mlflow.note.content"  # description of an experiment or run (markdown) in the UI
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"  # read by other MLflow UIs
DATASET_CONTEXT_TAG = "mlflow.data.context"  # the dataset input's role, shown beside it in the UI

SHOWN_METRICS = ("balanced_accuracy", "accuracy", "needs_review_rate")
SHOWN_PARAMS = ("method", "shots", "seed")


TEST_DECIMALS = 4  # held-out metrics are logged rounded (the UI prints floats in full); metrics.json keeps them exact


def test_metric(name: str) -> str:
    """MLflow name of a held-out metric from ``metrics.json`` (``balanced_accuracy`` -> ``test/balanced_accuracy``)."""
    return f"{TEST}/{name}"


def curve_metric(name: str, default_split: str) -> str:
    """MLflow name of a training curve value: ``val_loss`` -> ``val/loss``, ``train_loss`` -> ``train/loss``;
    other names (a hyper-parameter tried at a step, ``epoch``) go under ``default_split``."""
    for split in (TRAIN, VAL, TEST):
        if name.startswith(f"{split}_"):
            return f"{split}/{name[len(split) + 1:]}"
    return name if "/" in name else f"{default_split}/{name}"


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's column key: attributes|metrics|params|tags + backquoted name


def saved_view_tag(now_ms: int | None = None) -> tuple[str, str]:
    """(tag key, tag value) of the experiment's saved view with the headline columns."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    metrics = [_column("metrics", test_metric(m)) for m in SHOWN_METRICS]
    params = [_column("params", p) for p in SHOWN_PARAMS]
    models, dataset = _column("attributes", "Models"), _column("attributes", "Dataset")
    # the table's own column ids: the run name, then the headline, then what the run was; created/duration after
    order = [_column("attributes", "Run Name"), *metrics, *params, models, "runDateAndNestInfo", "duration", dataset]
    widths = {**{c: 150 for c in metrics}, metrics[0]: 190, **{c: 100 for c in params}, models: 190}
    state = {"selectedColumns": [*metrics, *params, models, dataset], "columnOrder": order, "columnWidths": widths}
    value = json.dumps({"name": SAVED_VIEW_NAME, "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(state)})
    return SAVED_VIEW_TAG_PREFIX + SAVED_VIEW_ID, value


def experiment_link(base: str, experiment_id: str) -> str:
    """The experiment's runs table with the headline view, in "Model training" mode."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={SAVED_VIEW_ID}&{WORKFLOW_QUERY}"


def run_link(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW_QUERY}"


def version_link(base: str, name: str, version: str) -> str:
    return f"{base.rstrip('/')}/#/models/{quote(name, safe='')}/versions/{version}?{WORKFLOW_QUERY}"


def experiment_description(command: str) -> str:
    """The description (markdown) of an experiment of ``adapt <command>``, set when adapt creates or first uses it."""
    if command == "pretrain":
        return ("Backbone pretrainings (`adapt pretrain`), one run each: the loss curves (`train/...`) and the "
                "written checkpoint in the run's artifacts (`checkpoint/`).")
    if command != "retrain":
        return f"Runs of `{command}` (adapt's benchmarks: experiments/README.md says what each measures)."
    return (
        f"Headline: **`{test_metric(HEADLINE_METRIC)}`** (held-out test split); columns: **Views > {SAVED_VIEW_NAME}**.\n\n"
        f"One run per `adapt retrain`; the champion gate compares the headline. Metric groups: `test/...` held out, never used for a choice; `val/...` the few-shot validation split "
        f"(curves and the values tried); `train/...`; `time/...`. Each run's model is named "
        f"`<dataset>-<method>-<shots>shot-seed<seed>` and its `model.onnx` is in the run's artifacts. If this page "
        f"shows traces instead of runs, switch the sidebar to **Model training**."
    )


def percent(value) -> str:
    try:
        return f"{100 * float(value):.1f}%"
    except (TypeError, ValueError):
        return "?"


def model_summary(tags: dict) -> str:
    """One line naming what a model is and how it scored, from its version tags (or run params)."""
    what = f"{tags.get('method', '?')}, {tags.get('shots', '?')} shots per class, seed {tags.get('seed', '?')}"
    data = f"{tags.get('dataset', '?')} (fingerprint {tags.get('dataset_fingerprint', '?')})"
    score = metric_value(tags, HEADLINE_METRIC)
    line = f"{what}, on {data}"
    if score is not None:
        line += f": balanced accuracy {percent(score)} on {tags.get('test_images', '?')} held-out test images"
    review = metric_value(tags, "needs_review_rate")
    if review is not None:
        line += f", {percent(review)} flagged for review"
    return line


def metric_value(tags: dict, metric: str) -> float | None:
    """A held-out metric from version tags: ``test/<metric>``, or ``<metric>`` on versions registered
    before the metrics were grouped."""
    for key in (test_metric(metric), metric):
        try:
            return float(tags[key])
        except (KeyError, TypeError, ValueError):
            continue
    return None
