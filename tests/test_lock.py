"""The lock files (requirements/*.lock) against their loose inputs: a lock that no longer satisfies
pyproject.toml or requirements/serve.in fails here and says which command refreshes it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.unit


def _check_module():
    spec = importlib.util.spec_from_file_location("lock_check", ROOT / "requirements" / "check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _check_module()


def test_the_committed_locks_satisfy_pyproject_and_the_serving_requirements():
    assert check.static_problems() == []


def test_every_lock_line_is_an_exact_pin_and_torch_is_the_tested_one():
    pins = check.locked_versions(check.TEST_LOCK)
    assert pins["torch"] == Version("2.14.1") and pins["open-clip-torch"] == Version("3.3.0")
    assert {"pytest", "grpcio", "protobuf", "onnxruntime", "mlflow"} <= set(pins)
    assert check.locked_versions(check.SERVE_LOCK)["onnxruntime"] == pins["onnxruntime"]


def test_a_lock_that_no_longer_satisfies_pyproject_fails_with_the_refresh_command(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "test.lock"
    lines = check.TEST_LOCK.read_text().splitlines()
    lines = [line.replace("torch==2.14.1", "torch==2.13.0") for line in lines if not line.startswith("pytest==")]
    stale.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(check, "TEST_LOCK", stale)
    assert check.main(["--static"]) == 1
    err = capsys.readouterr().err
    assert "pins torch==2.13.0, which does not satisfy torch==2.14.1" in err
    assert "has no pin for pytest>=8" in err
    assert "bash requirements/refresh.sh" in err
