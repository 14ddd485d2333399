"""MLflow tracking and registry of ``adapt retrain`` against the embedded sqlite store, as a user sees it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from serving_fixtures import free_port, image_bytes

from adapt import __version__
from adapt.cli import main
from adapt.tracking.registry import CHALLENGER, CHAMPION

pytestmark = pytest.mark.integration
TINY = ["--backbone", "adapt-tiny", "--pretrained", "none"]


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["-q", *map(str, args)])
    return rc, out.getvalue(), err.getvalue()


@dataclass
class Store:
    root: Path
    uri: str
    runs: list[Path]
    printed: list[str]


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Path:
    from conftest import write_brightness_folder

    return write_brightness_folder(tmp_path_factory.mktemp("data") / "parts", per_class=12)


@pytest.fixture(scope="module")
def store(parts, tmp_path_factory) -> Store:
    """Two retrains registered as 'parts' into the default store of a fresh working directory."""
    root = tmp_path_factory.mktemp("work")
    printed = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for out, method in (("run1", ["coop", "--hp", "epochs=3"]), ("run2", ["linear"])):
            rc, stdout, stderr = cli("retrain", "--data", parts, "--method", *method, "--shots", 4, "--output-dir", out, "--register", "parts", *TINY)
            assert rc == 0, stderr
            printed.append(stdout)
        assert "MLFLOW_TRACKING_URI" not in os.environ  # nothing rewrote the process environment
    return Store(root, f"sqlite:///{root / 'mlflow.db'}", [root / "run1", root / "run2"], printed)


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_each_retrain_is_one_run_with_params_curves_metrics_and_artifacts(store):
    assert (store.root / "mlflow.db").is_file() and (store.root / "mlruns").is_dir()  # embedded store, artifacts beside it
    c = client(store.uri)
    exp = c.get_experiment_by_name("retrain-parts")
    runs = {r.data.params["method"]: r for r in c.search_runs([exp.experiment_id])}
    assert set(runs) == {"coop", "linear"}
    run, expected = runs["coop"], metrics_of(store.runs[0])
    assert f"MLflow run: {run.info.run_id}" in store.printed[0]
    assert f"mlflow ui --backend-store-uri {store.uri}" in store.printed[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["shots"] == "4" and params["seed"] == "1" and params["backbone"] == "adapt-tiny"
    assert params["dataset_fingerprint"] == expected["dataset_fingerprint"]
    assert params["backbone_weights"].startswith("random-init:") and params["hp.epochs"] == "3"
    assert "chosen.best_epoch" in params and "reject_threshold" in params  # known only after fitting
    assert run.data.tags["adapt.version"] == __version__ and run.data.tags["adapt.host"]
    assert run.data.metrics["test/balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"], abs=5e-5)  # 4 decimals
    assert run.data.metrics["test/accuracy"] == pytest.approx(expected["accuracy"], abs=5e-5)
    # per-epoch curves from Lightning landed in the same run, named by split
    val_loss = c.get_metric_history(run.info.run_id, "val/loss")
    assert len(val_loss) == 3 and len({m.step for m in val_loss}) == 3
    assert c.get_metric_history(run.info.run_id, "train/loss")
    assert not [k for k in run.data.metrics if "/" not in k]  # every metric sits in a group (test/, val/, train/, time/)
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "confusion_matrix.png", "labels.json"} <= artifacts
    assert run.outputs.model_outputs  # the exported classifier is logged as the run's model


def test_champion_moves_only_to_a_better_model(store):
    first, second = (metrics_of(d)["balanced_accuracy"] for d in store.runs)
    assert "registered parts version 1; champion: moved to version 1 because there was no champion" in store.printed[0]
    c = client(store.uri)
    aliases = {k: str(v) for k, v in c.get_registered_model("parts").aliases.items()}
    if second > first:
        assert "registered parts version 2; champion: moved from version 1 to version 2" in store.printed[1]
        assert aliases[CHAMPION] == "2"
    else:
        assert "registered parts version 2; champion: kept version 1 because balanced_accuracy" in store.printed[1]
        assert "does not beat" in store.printed[1] and "version 2 is challenger" in store.printed[1]
        assert aliases == {CHAMPION: "1", CHALLENGER: "2"}
    tags = c.get_model_version("parts", "2").tags
    assert float(tags["test/balanced_accuracy"]) == pytest.approx(second, abs=1e-5)
    assert tags["dataset_fingerprint"] == metrics_of(store.runs[1])["dataset_fingerprint"]
    assert tags["adapt.gate.compared_to"] == "1" and tags["adapt.gate.metric"] == "balanced_accuracy"


def test_the_mlflow_ui_shows_headline_metrics_distinct_models_and_why_a_version_is_champion(store):
    """What a quality engineer reads in `mlflow ui`, asserted on the store through MlflowClient."""
    import subprocess

    c = client(store.uri)
    exp = c.get_experiment_by_name("retrain-parts")
    # the experiment: a description, and the saved view with the headline columns that the printed link opens
    assert "`test/balanced_accuracy`" in exp.tags["mlflow.note.content"]
    view = json.loads(exp.tags["mlflow.sharedViewState.headline"])
    columns = json.loads(view["state"])["selectedColumns"]
    assert columns[0] == "metrics.`test/balanced_accuracy`" and {"params.`method`", "params.`shots`"} <= set(columns)
    link = f"#/experiments/{exp.experiment_id}/runs?viewStateShareKey=headline&workflowType=machine_learning"
    assert f"MLflow runs table: http://127.0.0.1:5000/{link}" in store.printed[0]

    runs = {r.data.params["method"]: r for r in c.search_runs([exp.experiment_id])}
    models = {m.name: m for m in c.search_logged_models([exp.experiment_id])}
    assert set(models) == {"parts-coop-4shot-seed1", "parts-linear-4shot-seed1"}  # named after what they are
    for method, run in runs.items():
        expected = metrics_of(store.runs[0 if method == "coop" else 1])
        model = models[f"parts-{method}-4shot-seed1"]
        assert model.source_run_id == run.info.run_id
        assert model.params["method"] == method and model.params["shots"] == "4"
        assert f"{method}, 4 shots per class" in model.tags["mlflow.note.content"]  # its description on the model page
        (headline,) = [m for m in model.metrics if m.key == "test/balanced_accuracy"]
        assert headline.value == round(expected["balanced_accuracy"], 4)  # what the runs table prints
        assert (headline.dataset_name, headline.dataset_digest) == ("parts", expected["dataset_fingerprint"])
        assert "model.onnx" in {a.path for a in c.list_artifacts(run.info.run_id)}  # one click from the run
        note = run.data.tags["mlflow.note.content"]
        assert f"{method}, 4 shots per class, seed 1, on parts" in note and f"{100 * expected['balanced_accuracy']:.1f}%" in note
        assert "Registered as **parts version" in note and " because " in note
        # provenance: the commit of the checkout the tests run from
        root = Path(__file__).resolve().parents[1]
        if (root / ".git").exists():
            head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
            assert run.data.tags["mlflow.source.git.commit"] == head and run.data.tags["adapt.git_dirty"] in ("true", "false")

    # the registry: why each version is (or is not) champion, and the champion named on the model
    aliases = {k: str(v) for k, v in c.get_registered_model("parts").aliases.items()}
    champion = aliases[CHAMPION]
    assert c.get_registered_model("parts").tags[CHAMPION].startswith(f"version {champion}, ")  # shown in the registry list
    described = {v: c.get_model_version("parts", v).description for v in ("1", "2")}
    assert described[champion].startswith("**Champion** since ") and " because " in described[champion]
    other = "1" if champion == "2" else "2"
    if champion == "2":
        assert described["1"].startswith("**Former champion**: version 2 replaced it on ")
    else:
        assert described["2"].startswith("**Challenger, not champion**: version 1 stays champion because balanced_accuracy")
    assert "shots per class" in described[other] and "held-out test images" in described[other]


def test_champion_serves_as_pyfunc_and_exports_from_the_registry(store, tmp_path):
    import mlflow.pyfunc
    import pandas as pd

    from adapt.contract.modelmeta import read_file as read_metadata
    from adapt.tracking.registry import fetch_registered

    local = fetch_registered("models:/parts@champion", store.uri)
    assert local.onnx_path.name == "model.onnx" and local.torch_path.name == "classifier.pt" and local.name == "parts"
    assert read_metadata(local.onnx_path).model_name == "parts"
    model_dir = next(p for p in local.onnx_path.parents if (p / "MLmodel").is_file())
    model = mlflow.pyfunc.load_model(str(model_dir))
    import base64

    images = [base64.b64encode(image_bytes(level)).decode() for level in (20, 235)]
    out = model.predict(pd.DataFrame({"image": images}))
    assert list(out.columns[:3]) == ["label", "probability", "needs_review"]
    probs = out[["prob_dark", "prob_bright"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert list(out["label"]) == [["dark", "bright"][i] for i in probs.argmax(axis=1)]
    assert list(out["probability"]) == pytest.approx(list(probs.max(axis=1)))

    rc, stdout, stderr = cli("export", "--model", "models:/parts@champion", "--tracking-uri", store.uri, "--out", tmp_path / "x.onnx")
    assert rc == 0, stderr
    assert (tmp_path / "x.onnx").is_file()


def _copy_with(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    metrics = metrics_of(dst)
    metrics.update(changes)
    (dst / "metrics.json").write_text(json.dumps(metrics))
    return dst


def test_gate_refuses_worse_and_incomparable_models(store, tmp_path):
    good = store.runs[1]
    value = metrics_of(good)["balanced_accuracy"]
    worse = _copy_with(good, tmp_path / "worse", balanced_accuracy=value / 2)
    other = _copy_with(good, tmp_path / "other", balanced_accuracy=1.0, dataset_fingerprint="0000000000000000")

    def log(folder):
        rc, stdout, stderr = cli("models", "log", folder, "--register", "gate", "--tracking-uri", store.uri)
        assert rc == 0, stderr
        return stdout

    assert "champion: moved to version 1 because there was no champion" in log(worse)
    assert f"champion: moved from version 1 to version 2 because balanced_accuracy {value:.4f} beats {value / 2:.4f}" in log(good)
    refused = log(worse)
    assert f"champion: kept version 2 because balanced_accuracy {value / 2:.4f} does not beat {value:.4f}" in refused
    assert "version 3 is challenger" in refused
    incomparable = log(other)
    assert "champion: kept version 2 because it was evaluated on different held-out data" in incomparable
    assert "adapt models promote gate 4" in incomparable
    aliases = {k: str(v) for k, v in client(store.uri).get_registered_model("gate").aliases.items()}
    assert aliases == {CHAMPION: "2", CHALLENGER: "4"}


def test_models_list_and_deliberate_promotion(store):
    rc, table, _ = cli("models", "list", "--tracking-uri", store.uri)
    assert rc == 0
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["NAME", "VERSION", "ALIASES", "BALANCED_ACCURACY"]
    rows = {tuple(line.split()[:2]): line for line in lines[1:]}
    assert ("parts", "1") in rows and ("parts", "2") in rows
    assert CHAMPION in rows[("parts", "1")] or CHAMPION in rows[("parts", "2")]
    assert not any("lock" in line for line in lines)

    aliases = {k: str(v) for k, v in client(store.uri).get_registered_model("parts").aliases.items()}
    target = "1" if aliases[CHAMPION] == "2" else "2"
    rc, stdout, _ = cli("models", "promote", "parts", target, "--reason", "approved after line trial", "--tracking-uri", store.uri)
    assert rc == 0
    assert f"champion: parts version {target} (was version {aliases[CHAMPION]})" in stdout
    c = client(store.uri)
    assert str(c.get_registered_model("parts").aliases[CHAMPION]) == target
    assert "approved after line trial" in c.get_model_version("parts", target).tags["adapt.promoted.champion"]
    rc, table, _ = cli("models", "list", "parts", "--tracking-uri", store.uri)
    assert [line.split()[2] for line in table.splitlines()[1:] if line.split()[1] == target] == [CHAMPION]

    rc, _, stderr = cli("models", "promote", "parts", "99", "--tracking-uri", store.uri)
    assert rc == 1 and len(stderr.strip().splitlines()) == 1 and "version 99" in stderr


def test_unreachable_tracking_server_fails_before_any_work(parts, tmp_path, monkeypatch):
    import adapt.pipelines.retrain

    monkeypatch.setattr(adapt.pipelines.retrain, "run_retrain", lambda *a, **k: pytest.fail("trained despite an unreachable server"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    start = time.monotonic()
    rc, _, stderr = cli("retrain", "--data", parts, "--shots", 4, "--output-dir", tmp_path / "out",
                        "--tracking-uri", f"http://127.0.0.1:{free_port()}", "--register", "parts", *TINY)
    assert rc == 1
    assert len(stderr.strip().splitlines()) == 1
    assert "cannot reach MLflow tracking server http://127.0.0.1:" in stderr and "--no-tracking" in stderr
    assert time.monotonic() - start < 20
    assert not (tmp_path / "out").exists()


def test_tracking_failure_after_training_keeps_results_and_names_the_command_to_log_them(parts, tmp_path, monkeypatch):
    import adapt.pipelines.retrain_tracking
    from adapt.tracking.store import TrackingError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def upload_fails(*args, **kwargs):
        raise TrackingError("MLflow artifact upload failed at sqlite:///mlflow.db: connection failed ([Errno 111] Connection refused)")

    with monkeypatch.context() as m:
        m.setattr(adapt.pipelines.retrain_tracking, "log_classifier_model", upload_fails)
        rc, stdout, stderr = cli("retrain", "--data", parts, "--method", "linear", "--shots", 4, "--output-dir", "out", "--register", "later", *TINY)
    assert rc == 1
    assert "balanced accuracy" in stdout  # the summary is still printed
    reason = stderr.strip().splitlines()[-1]
    assert "artifact upload failed" in reason and "the model and metrics are in out" in reason
    assert {"model.onnx", "classifier.pt", "metrics.json", "confusion_matrix.png"} <= {p.name for p in (tmp_path / "out").iterdir()}
    c = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (failed,) = c.search_runs([c.get_experiment_by_name("retrain-parts").experiment_id])
    assert failed.info.status == "FAILED"

    command = shlex.split(reason.split("log them later with: ", 1)[1])
    assert command[:3] == ["adapt", "models", "log"]
    rc, stdout, stderr = cli(*command[1:])
    assert rc == 0, stderr
    assert "registered later version 1; champion: moved to version 1" in stdout
    runs = c.search_runs([c.get_experiment_by_name("retrain-parts").experiment_id], filter_string="attributes.status = 'FINISHED'")
    assert len(runs) == 1 and runs[0].data.tags["adapt.logged_later"] == "true"
    assert runs[0].inputs.dataset_inputs[0].dataset.digest == runs[0].data.params["dataset_fingerprint"]
    assert c.get_metric_history(runs[0].info.run_id, "test/balanced_accuracy")


def test_models_list_without_a_store_says_where_it_looked_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rc, _, stderr = cli("models", "list")
    assert rc == 1 and f"no MLflow store at {tmp_path / 'mlflow.db'}" in stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_retrain_runs_show_their_dataset_in_an_experiment_that_opens_on_runs(store):
    from adapt.tracking.runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    c = client(store.uri)
    exp = c.get_experiment_by_name("retrain-parts")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    retrained = [r for r in c.search_runs([exp.experiment_id]) if "adapt.logged_later" not in r.data.tags]
    assert len(retrained) == 2
    for run in retrained:
        (used,) = run.inputs.dataset_inputs
        assert used.dataset.name == "parts" and used.dataset.digest == run.data.params["dataset_fingerprint"]
        counts = json.loads(used.dataset.profile)
        assert counts["test"] == metrics_of(store.runs[0])["n"] and counts["few_shot_train"] == 8
        assert {t.key: t.value for t in used.tags}["mlflow.data.context"] == "train+test"


def test_existing_experiments_get_the_classic_ml_kind(tmp_path):
    from adapt.tracking.runs import EXPERIMENT_KIND_TAG, start_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = client(uri)
    exp_id = c.create_experiment("made-elsewhere")
    start_run(uri, "made-elsewhere", "first").end()
    assert c.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_runs_whose_process_died_are_marked_killed_by_the_next_command(tmp_path, caplog):
    import logging
    import signal
    import subprocess
    import sys

    from adapt.tracking.runs import start_run
    from adapt.tracking.store import PID_START_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sleeper = ("import sys, time; from adapt.tracking.runs import start_run; "
               "print(start_run(sys.argv[1], 'victims', 'sleeper').run_id, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", sleeper, uri], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        killed = proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    c = client(uri)
    assert c.get_run(killed).info.status == "RUNNING" and c.get_run(killed).data.tags["adapt.pid"] == str(proc.pid)
    alive = start_run(uri, "victims", "alive")  # this process: still running
    reused = start_run(uri, "victims", "reused-pid")  # same PID, but another process start time
    c.set_tag(reused.run_id, PID_START_TAG, "1")
    elsewhere = start_run(uri, "victims", "other-host", tags={"adapt.host": "line-7-pc", "adapt.pid": str(proc.pid)})

    with caplog.at_level(logging.WARNING, logger="adapt"):
        rc, _, stderr = cli("models", "list", "--tracking-uri", uri)
    assert rc == 0, stderr
    status = {run_id: c.get_run(run_id).info.status for run_id in (killed, alive.run_id, reused.run_id, elsewhere.run_id)}
    assert status == {killed: "KILLED", alive.run_id: "RUNNING", reused.run_id: "KILLED", elsewhere.run_id: "RUNNING"}
    (line,) = [r.getMessage() for r in caplog.records if "KILLED" in r.getMessage()]
    assert line.startswith("marked 2 MLflow run(s) KILLED") and "sleeper" in line and "reused-pid" in line
    assert "\n" not in line
    caplog.clear()
    assert cli("models", "list", "--tracking-uri", uri)[0] == 0
    assert not [r for r in caplog.records if "KILLED" in r.getMessage()]  # once only
