"""Serving building blocks without a gRPC server: stubs, batcher, feedback store, auth, sources."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from packaging.version import Version
from serving_fixtures import expected_label, image_bytes, make_tiny_onnx

from adapt.contract.imageio import ImageDecodeError, bytes_to_model_pixels
from adapt.contract.modelmeta import METADATA_KEY
from services import generate_protos
from services.auth import TokenAuthInterceptor, read_tokens
from services.batching import DeadlineExpiredError, DynamicBatcher, QueueFullError
from services.feedback import FeedbackStore, RecentRequests, check_label, check_request_id
from services.model import ModelLoadError, OnnxClassifier, RuntimeConfig
from adapt.contract.model_uri import RegistryRef, parse_model_uri
from services.sources import FileSource, SourceError

pytestmark = pytest.mark.unit


def test_committed_stubs_match_the_proto():
    stale = generate_protos.stale_stubs()
    assert not stale, f"services/proto/{stale} drifted from protos/; run `python -m services.generate_protos`"


def test_a_changed_proto_without_regenerated_stubs_is_caught(tmp_path):
    protos = tmp_path / "protos"
    shutil.copytree(generate_protos.PROTO_ROOT, protos)
    proto = protos / generate_protos.PROTO_FILES[0]
    text = proto.read_text()
    assert "bool heatmap = 4;" in text
    proto.write_text(text.replace("bool heatmap = 4;", "bool heatmap = 4;\n  string camera_id = 5;", 1))
    stale = generate_protos.stale_stubs(proto_root=protos)
    assert "inspection_pb2.py" in stale and "inspection_pb2.pyi" in stale


def test_a_newer_generator_version_stamp_is_not_drift(tmp_path):
    # what a newer grpcio-tools writes: the same code under a newer version line
    for stub in generate_protos.OUT_DIR.glob("inspection_pb2*"):
        text = stub.read_text()
        text = re.sub(r"GRPC_GENERATED_VERSION = '[^']*'", "GRPC_GENERATED_VERSION = '9.99.9'", text)
        text = text.replace("# Protobuf Python Version: ", "# Protobuf Python Version: 9.")
        (tmp_path / stub.name).write_text(text)
    assert "'9.99.9'" in (tmp_path / "inspection_pb2_grpc.py").read_text()
    assert generate_protos.stale_stubs(committed_dir=tmp_path) == []


def _pyproject_floor(package: str) -> Version:
    from packaging.requirements import Requirement

    project = tomllib.loads((generate_protos.REPO_ROOT / "pyproject.toml").read_text())["project"]
    (req,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == package]
    (floor,) = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
    return floor


def test_stub_runtime_guards_hold_for_every_version_pyproject_admits():
    # The generated stubs refuse to import under an older grpcio / protobuf than their generator;
    # pyproject.toml's floors must be at least the committed stamps, or a user whose resolver picks
    # the floor gets a RuntimeError at `adapt serve`.
    grpc_stub = (generate_protos.OUT_DIR / "inspection_pb2_grpc.py").read_text()
    grpc_stamp = Version(re.search(r"GRPC_GENERATED_VERSION = '([^']*)'", grpc_stub).group(1))
    pb2 = (generate_protos.OUT_DIR / "inspection_pb2.py").read_text()
    protobuf_stamp = Version(re.search(r"# Protobuf Python Version: (\S+)", pb2).group(1))
    assert grpc_stamp <= _pyproject_floor("grpcio")
    assert protobuf_stamp <= _pyproject_floor("protobuf")
    # and the installed runtime passes the guards (a fresh interpreter runs them at import)
    code = "import services.proto.inspection_pb2_grpc"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=generate_protos.REPO_ROOT)


def test_serving_path_does_not_import_torch_or_mlflow():
    code = (
        "import sys, services.server, services.client, adapt.cli.serve, adapt.cli.classify\n"
        "bad = [m for m in ('torch', 'lightning', 'open_clip', 'mlflow') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


# -- the ONNX wrapper --------------------------------------------------------------------------


def test_classifier_reads_metadata_and_answers_by_brightness(tmp_path):
    model = OnnxClassifier(make_tiny_onnx(tmp_path / "m.onnx", labels=("a", "b", "c"), name="n", version="7"))
    assert (model.name, model.version, model.labels) == ("n", "7", ["a", "b", "c"])
    pixels = np.stack([model.preprocess(image_bytes(b)) for b in (10, 128, 245)])
    answers = [model.labels[i] for i in model.predict(pixels).argmax(axis=1)]
    assert answers == [expected_label(b, ("a", "b", "c")) for b in (10, 128, 245)] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "spin, entries",
    [("off", {"session.intra_op.allow_spinning": "0"}), ("run", {"session.force_spinning_stop": "1"}), ("on", {})],
)
def test_spin_modes_set_onnx_runtime_session_entries(tmp_path, spin, entries):
    model = OnnxClassifier(make_tiny_onnx(tmp_path / "m.onnx"), RuntimeConfig(intra_op_threads=1, spin=spin))
    options = model.session.get_session_options()
    for key in ("session.intra_op.allow_spinning", "session.force_spinning_stop"):
        if key in entries:
            assert options.get_session_config_entry(key) == entries[key]
        else:  # never set: ONNX Runtime's default applies
            with pytest.raises(Exception):
                options.get_session_config_entry(key)
    assert model.predict(np.stack([model.preprocess(image_bytes(200))])).shape == (1, 2)
    with pytest.raises(ValueError, match="spin must be one of"):
        RuntimeConfig(spin="sometimes")


def test_model_without_metadata_or_wrong_input_is_refused(tmp_path):
    path = make_tiny_onnx(tmp_path / "m.onnx")
    model = onnx.load(path)
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "nometa.onnx")
    with pytest.raises(ModelLoadError, match=METADATA_KEY):
        OnnxClassifier(tmp_path / "nometa.onnx")
    model = onnx.load(path)
    model.graph.input[0].name = "images"
    for node in model.graph.node:
        node.input[:] = ["images" if i == "pixels" else i for i in node.input]
    onnx.save(model, tmp_path / "renamed.onnx")
    with pytest.raises(ModelLoadError, match="expected input 'pixels'"):
        OnnxClassifier(tmp_path / "renamed.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="cannot load"):
        OnnxClassifier(tmp_path / "junk.onnx")


# -- dynamic batching --------------------------------------------------------------------------


class _Model:
    """Records the batches it runs; optionally blocks until released."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches: list[int] = []
        self.gate = gate

    def predict(self, pixels):
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(len(pixels))
        return pixels.reshape(len(pixels), -1).astype(np.float32)


def _pixels(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, dtype=np.uint8)


def test_lone_request_is_dispatched_at_once_not_after_the_delay():
    batcher = DynamicBatcher(max_batch_size=8, max_delay_s=1.0)
    try:
        started = time.monotonic()
        result = batcher.submit(_Model(), _pixels(3)).result(timeout=5)
        assert time.monotonic() - started < 0.5
        assert result.batch_size == 1 and result.probabilities[0] == 3
    finally:
        batcher.stop()


def test_requests_still_arriving_join_the_batch_and_get_their_own_rows():
    model = _Model()
    batcher = DynamicBatcher(max_batch_size=8, max_delay_s=2.0)
    try:
        arrivals = [batcher.arrival() for _ in range(5)]  # five requests being decoded
        futures = []
        for value, arrival in enumerate(arrivals):
            with arrival:
                futures.append(arrival.submit(model, _pixels(value)))
        results = [f.result(timeout=5) for f in futures]
        assert model.batches == [5]
        assert [int(r.probabilities[0]) for r in results] == [0, 1, 2, 3, 4]
    finally:
        batcher.stop()


def test_failed_decode_withdraws_so_the_batch_does_not_wait_for_it():
    batcher = DynamicBatcher(max_batch_size=8, max_delay_s=5.0)
    try:
        waiting = batcher.arrival()
        with pytest.raises(ImageDecodeError), batcher.arrival() as arrival:
            future = batcher.submit(_Model(), _pixels(1))  # queued while another is "arriving"
            raise ImageDecodeError("corrupt")
        del arrival
        with waiting:
            pass  # withdrawn as well
        started = time.monotonic()
        future.result(timeout=5)
        assert time.monotonic() - started < 2.0
    finally:
        batcher.stop()


def test_full_queue_is_refused_and_expired_requests_are_not_run():
    gate = threading.Event()
    model = _Model(gate)
    batcher = DynamicBatcher(max_batch_size=1, max_delay_s=0, max_queue=2)
    try:
        first = batcher.submit(model, _pixels(0))  # taken by the worker, blocked in predict
        time.sleep(0.1)
        expired = batcher.submit(model, _pixels(1), deadline=time.monotonic() + 0.05)
        batcher.submit(model, _pixels(2))
        with pytest.raises(QueueFullError):
            batcher.submit(model, _pixels(3))
        time.sleep(0.1)
        gate.set()
        first.result(timeout=5)
        with pytest.raises(DeadlineExpiredError):
            expired.result(timeout=5)
    finally:
        batcher.stop()
    assert model.batches == [1, 1]


def test_items_prepared_for_different_model_versions_run_on_their_own_version():
    old, new = _Model(), _Model()
    batcher = DynamicBatcher(max_batch_size=8, max_delay_s=1.0)
    try:
        arrivals = [batcher.arrival() for _ in range(4)]
        futures = [a.submit(old if i < 2 else new, _pixels(i)) for i, a in enumerate(arrivals)]
        results = [f.result(timeout=5) for f in futures]
    finally:
        batcher.stop()
    assert [r.model for r in results] == [old, old, new, new]
    assert old.batches == [2] and new.batches == [2]


# -- feedback ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../etc", "a/b", "..", ".hidden", "x\\y", "", " pad", "x" * 200, "new\nline"])
def test_labels_that_are_not_plain_folder_names_are_refused(bad):
    with pytest.raises(ValueError):
        check_label(bad)


@pytest.mark.parametrize("bad", ["../x", "a/b", ".x", "", "-x", "a b", "x" * 129])
def test_request_ids_that_are_not_plain_file_names_are_refused(bad):
    with pytest.raises(ValueError):
        check_request_id(bad)


def test_feedback_folder_is_a_dataset_and_relabelling_moves_the_image(tmp_path):
    store = FeedbackStore(tmp_path / "fb")
    for i, (label, brightness) in enumerate([("good", 10), ("good", 20), ("defect", 240), ("defect", 250)]):
        stored = store.save(
            f"r{i}", label, image_bytes(brightness), model_name="tiny", model_version="1", predicted="good"
        )
        assert stored.path == f"{label}/r{i}.png" and not stored.duplicate
    assert store.save("r0", "good", image_bytes(10)).duplicate
    store.save("r1", "defect", image_bytes(20), note="operator fixed it")  # relabel
    assert not (tmp_path / "fb/good/r1.png").exists() and (tmp_path / "fb/defect/r1.png").exists()
    with open(tmp_path / "fb/feedback.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["path"], r["label"]) for r in rows] == [
        ("good/r0.png", "good"),
        ("defect/r2.png", "defect"),
        ("defect/r3.png", "defect"),
        ("defect/r1.png", "defect"),
    ]
    assert all((tmp_path / "fb" / r["path"]).is_file() for r in rows)
    assert not list((tmp_path / "fb").rglob("*.tmp"))
    # a restarted server knows what it stored
    assert FeedbackStore(tmp_path / "fb").save("r1", "defect", image_bytes(20)).duplicate
    with pytest.raises(ImageDecodeError):
        store.save("r9", "good", b"not an image")


def test_feedback_keeps_jpeg_bytes_and_stores_other_formats_as_png(tmp_path):
    store = FeedbackStore(tmp_path)
    jpeg = image_bytes(100, fmt="JPEG")
    assert store.save("j", "good", jpeg).path == "good/j.jpg"
    assert (tmp_path / "good/j.jpg").read_bytes() == jpeg
    assert store.save("g", "good", image_bytes(100, fmt="GIF")).path == "good/g.png"
    assert bytes_to_model_pixels((tmp_path / "good/g.png").read_bytes(), 4).shape == (4, 4, 3)


def test_recent_requests_cache_is_bounded_by_bytes():
    cache = RecentRequests(max_bytes=25)
    for i in range(4):
        cache.put(f"r{i}", RecentRequests.Entry(b"x" * 10, "m", "1", "good"))
    assert cache.get("r0") is None and cache.get("r1") is None
    assert cache.get("r3").predicted == "good"


# -- auth and sources ----------------------------------------------------------------------------


def test_token_file_parsing_and_validation(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# camera PCs\nalpha  # line 3\n\n  beta\n")
    tokens = read_tokens(path)
    assert tokens == ["alpha", "beta"]
    interceptor = TokenAuthInterceptor(tokens)
    assert interceptor._valid("Bearer beta") and interceptor._valid("bearer alpha")
    assert not interceptor._valid("Bearer gamma") and not interceptor._valid("alpha") and not interceptor._valid("")
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no tokens"):
        read_tokens(tmp_path / "empty")


def test_model_uris():
    assert parse_model_uri("models:/elpv@champion") == RegistryRef("elpv", alias="champion")
    assert parse_model_uri("models:/elpv/3") == RegistryRef("elpv", version="3")
    for bad in ("models:/elpv", "models:/a/b/c", "runs:/x/model"):
        with pytest.raises(ValueError):
            parse_model_uri(bad)


def test_file_source_token_changes_when_the_file_is_replaced(tmp_path):
    source = FileSource(tmp_path / "m.onnx")
    with pytest.raises(SourceError):
        source.poll()
    make_tiny_onnx(tmp_path / "m.onnx", version="1")
    first = source.poll()
    assert source.poll() == first
    make_tiny_onnx(tmp_path / "m.onnx", version="2")
    assert source.poll() != first


def test_a_restarted_store_removes_temp_files_of_interrupted_writes(tmp_path, caplog):
    store = FeedbackStore(tmp_path / "fb")
    store.save("r0", "good", image_bytes(10))
    left = tmp_path / "fb" / "good" / ".tmpab12cd.tmp"  # what a kill -9 between write and rename leaves
    left.write_bytes(b"half an image")
    with caplog.at_level("WARNING"):
        again = FeedbackStore(tmp_path / "fb")
    assert not left.exists() and "removed 1 unfinished temp file" in caplog.text
    assert (tmp_path / "fb" / "good" / "r0.png").is_file() and again.save("r0", "good", image_bytes(10)).duplicate


class _Flaky:
    """A stand-in server on 127.0.0.1: Classify and SubmitFeedback fail INTERNAL ``fail_first`` times
    (what Ray Serve's proxy answers for a replica that died mid-request), health answers NOT_FOUND
    ``not_deployed`` times (Ray's proxy before the application is deployed), then SERVING."""

    def __init__(self, fail_first: int = 1, not_deployed: int = 0):
        from concurrent import futures

        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from services.proto import inspection_pb2 as pb
        from services.proto import inspection_pb2_grpc as pb_grpc

        calls = self.calls = {"Classify": 0, "SubmitFeedback": 0, "Check": 0}

        class Inspection(pb_grpc.InspectionServiceServicer):
            def Classify(self, request, context):
                calls["Classify"] += 1
                if calls["Classify"] <= fail_first:
                    context.abort(grpc.StatusCode.INTERNAL, "The actor died unexpectedly before finishing this task.")
                return pb.ClassifyResponse(label="ok")

            def SubmitFeedback(self, request, context):
                calls["SubmitFeedback"] += 1
                if calls["SubmitFeedback"] <= fail_first:
                    context.abort(grpc.StatusCode.INTERNAL, "boom")
                return pb.SubmitFeedbackResponse(stored_path="x")

        class Health(health_pb2_grpc.HealthServicer):
            def Check(self, request, context):
                calls["Check"] += 1
                if calls["Check"] <= not_deployed:
                    context.abort(grpc.StatusCode.NOT_FOUND, "Application metadata not set.")
                return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_InspectionServiceServicer_to_server(Inspection(), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(Health(), self.server)
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.stop(grace=None)


def test_client_retries_an_idempotent_classify_on_internal_but_not_feedback():
    import grpc

    from services.client import InspectionClient

    with _Flaky(fail_first=2) as server, InspectionClient(server.target, timeout=10, backoff=0.05) as client:
        assert client.classify(image_bytes(8)).label == "ok"
        assert server.calls["Classify"] == 3  # two INTERNAL answers retried by the channel
        with pytest.raises(grpc.RpcError) as err:  # storing feedback twice is not the client's call to make
            client.submit_feedback("req-1", "ok")
        assert err.value.code() == grpc.StatusCode.INTERNAL and server.calls["SubmitFeedback"] == 1


def test_wait_until_serving_waits_while_the_service_is_not_deployed_yet():
    from services.client import InspectionClient, NotServing

    with _Flaky(not_deployed=3) as server, InspectionClient(server.target) as client:
        client.wait_until_serving(10, poll_interval=0.05)
        assert server.calls["Check"] == 4
    with _Flaky(not_deployed=10_000) as server, InspectionClient(server.target) as client:
        with pytest.raises(NotServing, match="not deployed yet"):
            client.wait_until_serving(0.5, poll_interval=0.05)
