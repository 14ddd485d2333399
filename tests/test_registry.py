"""The promotion gate: its decision table, and two registrations racing for ``champion``."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from serving_fixtures import make_tiny_onnx

from adapt.tracking import registry
from adapt.tracking.registry import CHALLENGER, CHAMPION, decide, gate, register_version
from adapt.tracking.runs import log_classifier_model, start_run
from adapt.tracking.store import mlflow_client


def _version(version, **tags):
    return SimpleNamespace(version=str(version), tags={k: str(v) for k, v in tags.items()})


FP = "39c8781e0cb9b0d8"


@pytest.mark.unit
@pytest.mark.parametrize(
    "new, champion, metric, promote, reason",
    [
        (_version(1, balanced_accuracy=0.8, dataset_fingerprint=FP), None, "balanced_accuracy", True, "there was no champion"),
        (_version(2, balanced_accuracy=0.9, dataset_fingerprint=FP), _version(1, balanced_accuracy=0.8, dataset_fingerprint=FP),
         "balanced_accuracy", True, "0.9000 beats 0.8000"),
        (_version(2, balanced_accuracy=0.8, dataset_fingerprint=FP), _version(1, balanced_accuracy=0.8, dataset_fingerprint=FP),
         "balanced_accuracy", False, "0.8000 does not beat 0.8000"),
        (_version(2, balanced_accuracy=0.7, dataset_fingerprint=FP), _version(1, balanced_accuracy=0.8, dataset_fingerprint=FP),
         "balanced_accuracy", False, "does not beat"),
        (_version(2, balanced_accuracy=0.99, dataset_fingerprint="other"), _version(1, balanced_accuracy=0.8, dataset_fingerprint=FP),
         "balanced_accuracy", False, "different held-out data"),
        (_version(2, balanced_accuracy=0.9, dataset_fingerprint=FP), _version(1, dataset_fingerprint=FP),
         "balanced_accuracy", False, "champion version 1 has no balanced_accuracy"),
        (_version(2, dataset_fingerprint=FP), _version(1, balanced_accuracy=0.8, dataset_fingerprint=FP),
         "balanced_accuracy", False, "version 2 has no balanced_accuracy"),
        (_version(2, needs_review_rate=0.1, dataset_fingerprint=FP), _version(1, needs_review_rate=0.2, dataset_fingerprint=FP),
         "needs_review_rate", True, "0.1000 beats 0.2000"),  # lower is better
        (_version(2, **{"test/balanced_accuracy": 0.9}, dataset_fingerprint=FP),
         _version(1, **{"test/balanced_accuracy": 0.8}, dataset_fingerprint=FP), "balanced_accuracy", True, "0.9000 beats 0.8000"),
        (_version(2, **{"test/balanced_accuracy": 0.7}, dataset_fingerprint=FP), _version(1, balanced_accuracy=0.8, dataset_fingerprint=FP),
         "balanced_accuracy", False, "0.7000 does not beat 0.8000"),  # a champion registered before the test/ names
    ],
    ids=["first", "better", "tie", "worse", "other-data", "champion-unmeasured", "new-unmeasured", "lower-is-better",
         "grouped-names", "champion-with-old-names"],
)
def test_gate_decision_table(new, champion, metric, promote, reason):
    got_promote, got_reason, _, _ = decide("parts", new, champion, metric)
    assert got_promote is promote
    assert reason in got_reason
    if not promote and champion is not None and "different" in got_reason:
        assert "adapt models promote parts 2" in got_reason  # the way out is named


def race_for_champion(tracking_uri: str, name: str, tmp_path, monkeypatch) -> None:
    """Register a champion (0.6) and two better versions (0.7, 0.9) whose gates run at the same time.

    The slower gate (0.7) reads the champion first and writes last: without the registry lock it
    would overwrite the 0.9 champion. With it, 0.9 must end as champion and 0.7 as challenger.
    """
    run = start_run(tracking_uri, f"{name}-race", "race", {"purpose": "race test"})
    model_id = log_classifier_model(run, make_tiny_onnx(tmp_path / f"{name}.onnx"))
    run.end()
    client = mlflow_client(tracking_uri)

    def tags(value):
        return {"balanced_accuracy": str(value), "dataset_fingerprint": FP}

    first = register_version(client, name, model_id, run.run_id, tags(0.6))
    assert gate(client, tracking_uri, name, first).moved
    worse = register_version(client, name, model_id, run.run_id, tags(0.7))
    better = register_version(client, name, model_id, run.run_id, tags(0.9))

    real_decide = registry.decide

    def slow_decide(model, new, champion, metric):
        time.sleep(1.0 if new.version == worse else 0.2)
        return real_decide(model, new, champion, metric)

    monkeypatch.setattr(registry, "decide", slow_decide)
    decisions, errors = {}, []

    def contend(version):
        try:
            decisions[version] = gate(mlflow_client(tracking_uri), tracking_uri, name, version)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(v,)) for v in (worse, better)]
    threads[0].start()
    time.sleep(0.05)
    threads[1].start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    aliases = {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    assert aliases[CHAMPION] == better
    assert aliases.get(CHALLENGER) in (None, worse)
    # each decision records what it was compared with; the worse one never compared against a stale champion
    assert decisions[better].moved
    for version, decision in decisions.items():
        tags = client.get_model_version(name, version).tags
        assert tags["adapt.gate.decision"] == decision.alias
        assert tags.get("adapt.gate.compared_to", "") == (decision.previous or "")
    if decisions[worse].moved:  # it went first: the better one then compared against it
        assert decisions[better].previous == worse
    else:
        assert decisions[worse].previous == better
    # no lock entry is left behind
    assert not [m.name for m in client.search_registered_models() if m.name.endswith(registry.LOCK_SUFFIX)]


@pytest.mark.integration
def test_racing_registrations_on_the_embedded_store_leave_the_better_champion(tmp_path, monkeypatch):
    race_for_champion(f"sqlite:///{tmp_path / 'mlflow.db'}", "race", tmp_path, monkeypatch)
