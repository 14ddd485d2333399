"""``adapt classify`` and ``adapt serve`` as a user runs them (in-process and as subprocesses)."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_fixtures import free_port, image_bytes, make_tiny_onnx, start_server

from adapt.cli import main
from services.client import InspectionClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    srv = start_server([make_tiny_onnx(root / "model.onnx", version="3")], root / "feedback", reload_interval=0)
    yield srv
    srv.stop(grace=1)


@pytest.fixture()
def parts(tmp_path) -> Path:
    folder = tmp_path / "parts"
    (folder / "line2").mkdir(parents=True)
    (folder / "dark.png").write_bytes(image_bytes(10))
    (folder / "line2" / "bright.jpg").write_bytes(image_bytes(245, fmt="JPEG"))
    (folder / "notes.txt").write_text("not an image, not picked from a folder")
    return folder


def _ctrl_c_enabled() -> None:
    # Pytest started in the background by a non-interactive shell ignores SIGINT, and children
    # inherit that (Python then installs no KeyboardInterrupt handler); a terminal's Ctrl-C works.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _adapt(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "adapt", *args],
        cwd=kwargs.pop("cwd"),  # a tmp dir: nothing lands in the checkout
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_enabled,
        **kwargs,
    )


def test_classify_a_folder_prints_a_table(server, parts, capsys):
    assert main(["classify", "--server", server.address, str(parts)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["PATH", "LABEL", "TOP", "REVIEW"]
    table = {Path(line.split()[0]).name: line.split() for line in lines[1:]}
    assert set(table) == {"dark.png", "bright.jpg"}
    assert table["dark.png"][1:4] == ["good", "1.000", "no"] and table["bright.jpg"][1] == "defect"
    assert table["dark.png"][4] == "tiny:3"
    assert "classified 2 image(s)" in err


def test_classify_writes_csv_and_reports_bad_files(server, parts, tmp_path, capsys):
    (parts / "broken.png").write_bytes(b"\x89PNG broken")
    out_csv = tmp_path / "out.csv"
    code = main(
        [
            "classify",
            "--server",
            server.address,
            "--stream",
            "--csv",
            str(out_csv),
            str(parts),
            str(parts / "line2" / "bright.jpg"),
        ]
    )
    assert code == 1  # one file failed
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [Path(r["path"]).name for r in rows] == ["broken.png", "dark.png", "bright.jpg", "bright.jpg"]
    assert rows[0]["error"] and not rows[0]["label"]
    assert [r["label"] for r in rows[1:]] == ["good", "defect", "defect"]
    assert all(r["model_version"] == "3" and r["request_id"] for r in rows[1:])
    assert "1 failed" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_unreachable_server_is_a_one_line_error_and_leaves_no_csv(host, parts, tmp_path, capsys, caplog):
    target = f"{host}:{free_port()}"
    out_csv = tmp_path / "out.csv"
    with caplog.at_level(logging.INFO):
        code = main(["classify", "--server", target, "--timeout", "2", "--csv", str(out_csv), str(parts)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert err == f"adapt classify: error: cannot reach server {target} (connection refused); is `adapt serve` running?"
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]  # no retry chatter without -v
    assert list(tmp_path.iterdir()) == [parts]  # neither out.csv nor a half-written part file
    assert main(["classify", "--server", "127.0.0.1:1", str(parts / "missing.png")]) == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_wait_ready_gives_up_after_its_timeout_with_one_line(parts, capsys):
    target = f"127.0.0.1:{free_port()}"
    assert main(["classify", "--server", target, "--wait-ready", "1", str(parts)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"adapt classify: error: server {target} not ready after 1s (connection refused); is `adapt serve` running?"


def test_wait_ready_waits_for_a_server_that_starts_later(parts, tmp_path, capsys):
    from services.server import InspectionServer, ServeConfig

    port = free_port()
    model = make_tiny_onnx(tmp_path / "late.onnx", version="7")
    config = ServeConfig(models=(str(model),), host="127.0.0.1", port=port, data_dir=str(tmp_path / "fb"), reload_interval=0)
    late = InspectionServer(config)
    starter = threading.Timer(1.0, late.start)
    starter.start()
    try:
        out_csv = tmp_path / "late.csv"
        code = main(["classify", "--server", f"127.0.0.1:{port}", "--wait-ready", "60", "--csv", str(out_csv), str(parts)])
        assert code == 0, capsys.readouterr().err
        with open(out_csv, newline="") as fh:
            assert {r["model_version"] for r in csv.DictReader(fh)} == {"7"}
    finally:
        starter.join()
        late.stop(grace=1)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_watch_classifies_files_as_they_land_until_stopped(server, tmp_path, stop):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "old.png").write_bytes(image_bytes(0))  # already there: ignored
    out_csv = tmp_path / "watch.csv"
    proc = _adapt(
        "classify", "--server", server.address, "--watch", str(inbox), "--poll-interval", "0.1", "--csv", str(out_csv),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 20
        while "watching" not in (proc.stderr.readline() or "watching"):
            assert time.monotonic() < deadline
        (inbox / "a.png").write_bytes(image_bytes(250))
        (inbox / "sub").mkdir()
        (inbox / "sub" / "b.bmp").write_bytes(image_bytes(5, fmt="BMP"))
        rows = []
        while len(rows) < 2:
            assert time.monotonic() < deadline, f"watch produced {rows}"
            time.sleep(0.1)
            with open(out_csv, newline="") as fh:
                rows = list(csv.DictReader(fh))
        proc.send_signal(stop)
        assert proc.wait(timeout=45) == 0  # generous: CI machines are busy
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sorted((Path(r["path"]).name, r["label"]) for r in rows) == [("a.png", "defect"), ("b.bmp", "good")]


def test_sigterm_drains_requests_in_flight_and_exits_0(tmp_path):
    model = make_tiny_onnx(tmp_path / "slow.onnx", slow_matmuls=100)  # tens of ms per image
    port = free_port()
    proc = _adapt(
        "serve",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-batch-size",
        "1",
        "--reload-interval",
        "0",
        "--data-dir",
        str(tmp_path / "fb"),
        "--log-format",
        "json",
        cwd=tmp_path,
    )
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (
                        health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                        == health_pb2.HealthCheckResponse.SERVING
                    ):
                        break
                except grpc.RpcError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.1)
        client = InspectionClient(address, timeout=30, retries=0)
        one = client.classify(image_bytes(0)).server_latency_ms / 1000
        answers, failures = [], []

        def call(brightness: int) -> None:
            try:
                answers.append(
                    client.classify(image_bytes(brightness)).label == ("defect" if brightness > 128 else "good")
                )
            except grpc.RpcError as err:
                failures.append(err)

        threads = [threading.Thread(target=call, args=(b,)) for b in (0, 250, 20, 230, 40, 210)]
        for t in threads:
            t.start()
        time.sleep(min(1.5 * one, 0.5))  # all queued, one or two done
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=30)
        client.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [line for line in proc.stderr.read().splitlines() if line.startswith("{")]
    events = {e["event"]: e for e in map(json.loads, lines) if "event" in e}
    assert not failures and answers == [True] * 6
    assert events["draining"]["queued"] >= 1, "nothing was in flight when SIGTERM came"
    assert "stopped" in events


@pytest.mark.parametrize(
    "host, security, warned",
    [
        ("0.0.0.0", {}, "without a token or TLS"),
        ("0.0.0.0", {"token": True}, "without TLS"),
        ("127.0.0.1", {}, None),
        ("localhost", {}, None),
    ],
)
def test_serving_beyond_loopback_without_token_or_tls_warns_once(host, security, warned, tmp_path, caplog):
    from services.server import InspectionServer, ServeConfig

    token_file = None
    if security.get("token"):
        token_file = tmp_path / "tokens.txt"
        token_file.write_text("s3cret\n")
    model = make_tiny_onnx(tmp_path / "m.onnx")
    config = ServeConfig(models=(str(model),), host=host, port=0, data_dir=str(tmp_path / "fb"), reload_interval=0,
                         token_file=str(token_file) if token_file else None)
    with caplog.at_level(logging.INFO, logger="services"):
        server = InspectionServer(config).start()
        server.stop(grace=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and len(warnings[0].splitlines()) == 1
        assert f"serving on {host}:{server.port} {warned}" in warnings[0] and "--host 127.0.0.1" in warnings[0]
        assert ("--token-file" in warnings[0]) != bool(token_file) and "--tls-cert" in warnings[0]


def test_serve_help_documents_host(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--host HOST" in text and "127.0.0.1 = this machine only" in text and "--token-file and TLS" in text
