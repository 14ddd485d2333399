"""`adapt demo` end to end with a tiny backbone and a few held-out images."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


@pytest.mark.e2e
@pytest.mark.slow
def test_demo_runs_end_to_end_and_prints_what_to_do_next(tmp_path):
    cmd = [sys.executable, "-m", "adapt", "demo", "--backbone", "adapt-tiny", "--pretrained", "none", "--shots", "4",
           "--max-test-images", "24", "--budget-minutes", "0.5", "--output-dir", str(tmp_path / "demo")]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the default store, in tmp_path
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "classified 24 held-out images through the service" in out
    acc = float(re.search(r"accuracy ([\d.]+)%", out).group(1))
    correct = acc / 100 * 24
    assert abs(correct - round(correct)) < 0.03  # a count of the 24 images the service answered, not another set
    assert re.search(r"throughput \d+ images/s", out) and re.search(r"latency p50 [\d.]+ ms, p99 [\d.]+ ms", out)
    assert "registered adapt-demo version 1" in out and "champion" in out
    assert re.search(r"at a review budget of 25%: [\d.]+% of images sent to review", out), out[-2000:]
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    assert "adapt serve --model models:/adapt-demo@champion" in out
    samples = list((tmp_path / "demo" / "sample").iterdir())
    assert samples and all(p.stat().st_size > 0 for p in samples)
    assert (tmp_path / "mlflow.db").is_file()  # the embedded store in the working directory

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("adapt-demo", "champion").version) == "1"
