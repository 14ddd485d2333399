"""The Dockerfile, checked without a Docker engine: its structure, its install step, and that
the image's contents (serving requirements only, no training stack) really can serve."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
dockerfile = pytest.importorskip("dockerfile")


def _instructions():
    return [(c.cmd.upper(), c.value, c.flags) for c in dockerfile.parse_file(str(ROOT / "Dockerfile"))]


@pytest.mark.unit
def test_image_is_a_non_root_grpc_server_with_a_health_check():
    ins = _instructions()
    cmds = [c for c, _, _ in ins]
    assert cmds[0] in ("ARG", "FROM") and "FROM" in cmds
    users = [v[0] for c, v, _ in ins if c == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(c == "EXPOSE" and "50051" in v for c, v, _ in ins)
    health = next(v for c, v, _ in ins if c == "HEALTHCHECK")
    assert "services.healthcheck" in health and "localhost:50051" in health
    entry = next(v for c, v, _ in ins if c == "ENTRYPOINT")
    cmd = next(v for c, v, _ in ins if c == "CMD")
    assert entry == ("adapt",) and cmd[0] == "serve" and "--model" in cmd


@pytest.mark.unit
@pytest.mark.parametrize("variant, runtime", [("cpu", "onnxruntime"), ("cuda", "onnxruntime-gpu")])
def test_install_step_picks_one_onnxruntime_per_variant(tmp_path, variant, runtime):
    """Run the Dockerfile's requirements RUN line with a stand-in pip that records what it was asked."""
    run = next(v[0] for c, v, _ in _instructions() if c == "RUN" and "serve.lock" in v[0])
    (tmp_path / "serve.lock").write_text((ROOT / "requirements" / "serve.lock").read_text())
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "pip").write_text(f'#!/bin/sh\ncp "$3" "{tmp_path}/asked.txt"\n')
    (fake_bin / "pip").chmod(0o755)
    script = run.replace("/tmp/requirements.txt", str(tmp_path / "req.txt"))
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "VARIANT": variant}
    subprocess.run(["sh", "-c", script], cwd=tmp_path, env=env, check=True)
    asked = [line.split(">=")[0].split("==")[0].strip() for line in (tmp_path / "asked.txt").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert runtime in asked
    assert {"onnxruntime", "onnxruntime-gpu"} & set(asked) == {runtime}  # never both


@pytest.mark.unit
def test_serving_image_gets_the_versions_the_tests_run_with():
    # every package the image installs (requirements/serve.lock) that this test environment has too
    # is at the same version, so what the serving tests passed with is what the image runs
    from packaging.requirements import Requirement

    for line in (ROOT / "requirements" / "serve.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            pytest.fail(f"{req.name} is in the serving image but not installed here")
        assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} here, image: {req}"


BLOCKER = textwrap.dedent(
    """
    import sys
    BLOCKED = {"torch", "torchvision", "lightning", "pytorch_lightning", "open_clip", "peft", "sklearn", "matplotlib", "timm"}
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not in the serving image")
    sys.meta_path.insert(0, Block())
    from adapt.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.integration
def test_serve_runs_without_the_training_stack(tmp_path):
    from serving_fixtures import free_port, make_tiny_onnx

    model = make_tiny_onnx(tmp_path / "model.onnx")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKER, "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(tmp_path / "feedback")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        status = "UNREACHABLE"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            check = subprocess.run([sys.executable, "-m", "services.healthcheck", f"127.0.0.1:{port}"], capture_output=True, text=True)
            status = check.stdout.strip() or check.stderr.strip()
            if check.returncode == 0:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
        assert "SERVING" in status
    finally:
        proc.terminate()
        proc.wait(timeout=30)
