"""A real inspection server on 127.0.0.1: every RPC, errors, health, reflection, batching, reload, auth, TLS."""

from __future__ import annotations

import csv
import io
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from serving_fixtures import (
    expected_label,
    free_port,
    image_bytes,
    make_certs,
    make_echo_onnx,
    make_tiny_onnx,
    start_server,
    stub_for,
)

from adapt.contract.imageio import decode_image, to_model_pixels
from services import healthcheck
from services.client import InspectionClient
from services.proto import inspection_pb2 as pb
from services.sources import Artifact

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Default model ``tiny`` (good/defect by brightness) plus ``echo`` (returns its input pixels)."""
    root = tmp_path_factory.mktemp("serve")
    tiny = make_tiny_onnx(root / "tiny.onnx", name="tiny", version="1")
    echo = make_echo_onnx(root / "echo.onnx", image_size=6, resize_mode="squash")
    srv = start_server(
        [tiny, echo],
        root / "feedback",
        max_message_mb=1,
        max_queue_delay_ms=20,
        reload_interval=0,
        metrics_port=free_port(),
    )
    yield srv
    srv.stop(grace=2)


@pytest.fixture(scope="module")
def stub(server):
    stub, channel = stub_for(server.address)
    yield stub
    channel.close()


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


# -- the RPCs ----------------------------------------------------------------------------------


def test_classify_answers_each_image_with_sorted_scores_and_the_reject_option(stub):
    for brightness, review in [(5, False), (250, False), (128, True)]:
        answer = stub.Classify(pb.ClassifyRequest(image=image_bytes(brightness), request_id=f"b{brightness}"))
        assert answer.label == expected_label(brightness)
        assert answer.needs_review is review, answer
        assert [s.label for s in answer.scores][0] == answer.label
        assert [s.probability for s in answer.scores] == sorted((s.probability for s in answer.scores), reverse=True)
        assert answer.top_probability == pytest.approx(answer.scores[0].probability)
        assert answer.reject_threshold == pytest.approx(0.6)
        assert (answer.model_name, answer.model_version, answer.request_id) == ("tiny", "1", f"b{brightness}")
        assert answer.batch_size >= 1
    assert len(stub.Classify(pb.ClassifyRequest(image=image_bytes(0))).request_id) == 32  # server-made uuid


def test_stream_answers_in_order_and_a_bad_image_does_not_end_it(stub):
    images = [image_bytes(b) for b in (0, 255, 30)] + [b"garbage"] + [image_bytes(220)]
    answers = list(
        stub.ClassifyStream(iter(pb.ClassifyRequest(image=i, request_id=f"s{k}") for k, i in enumerate(images)))
    )
    assert [a.request_id for a in answers] == [f"s{k}" for k in range(5)]
    assert [a.label for a in answers] == ["good", "defect", "good", "", "defect"]
    assert (
        answers[3].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        and "not an image" in answers[3].error.message
    )


def test_list_models_describes_both_models_default_first(stub, server):
    models = stub.ListModels(pb.ListModelsRequest()).models
    assert [(m.name, m.is_default, m.loaded) for m in models] == [("tiny", True, True), ("echo", False, True)]
    tiny = models[0]
    assert list(tiny.labels) == ["good", "defect"] and tiny.image_size == 32 and tiny.version == "1"
    assert tiny.reject_threshold == pytest.approx(0.6) and tiny.resize_mode == "shortest"
    assert tiny.source_uri.endswith("tiny.onnx") and tiny.loaded_at.seconds > 0


@pytest.mark.parametrize(
    "payload, code, reason",
    [
        (b"", grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (b"\x00" * 100, grpc.StatusCode.INVALID_ARGUMENT, "not an image"),
        (b"%PDF-1.4 hello", grpc.StatusCode.INVALID_ARGUMENT, "not an image"),
        (image_bytes(10, size=(300, 300))[:200], grpc.StatusCode.INVALID_ARGUMENT, ""),  # truncated PNG
        (b"x" * (2 * 1024 * 1024), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),  # > --max-message-mb 1
    ],
)
def test_bad_input_gets_a_clear_status_and_the_next_request_still_answers(stub, payload, code, reason):
    with pytest.raises(grpc.RpcError) as info:
        stub.Classify(pb.ClassifyRequest(image=payload))
    assert info.value.code() == code
    assert reason in info.value.details() and "\n" not in info.value.details()
    assert stub.Classify(pb.ClassifyRequest(image=image_bytes(250))).label == "defect"


def test_unknown_model_and_bad_request_id(stub):
    assert (
        _code(lambda: stub.Classify(pb.ClassifyRequest(image=image_bytes(0), model="nope")))
        == grpc.StatusCode.NOT_FOUND
    )
    assert _code(lambda: stub.Classify(pb.ClassifyRequest(image=image_bytes(0), request_id="../x"))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert stub.Classify(pb.ClassifyRequest(image=image_bytes(0), model="tiny")).label == "good"


def test_requests_whose_deadline_passes_in_the_queue_are_not_run(tmp_path):
    slow = make_tiny_onnx(tmp_path / "slow.onnx", slow_matmuls=100)  # tens of ms per batch
    srv = start_server([slow], tmp_path / "fb", max_batch_size=1)
    codes = []
    try:
        stub, channel = stub_for(srv.address)
        stub.Classify(pb.ClassifyRequest(image=image_bytes(0)))  # connected and warm
        one = max(stub.Classify(pb.ClassifyRequest(image=image_bytes(0))).server_latency_ms for _ in range(3)) / 1000

        def call() -> None:
            try:  # 6 requests, one at a time through the model: the last ones can't make it
                stub.Classify(pb.ClassifyRequest(image=image_bytes(0)), timeout=2.5 * one)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                codes.append(err.code())

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(6 * one)  # let the worker go through whatever was queued
        runs = srv.metrics.batch_size.labels("tiny")._sum.get() - 4
        assert stub.Classify(pb.ClassifyRequest(image=image_bytes(250))).label == "defect"
        channel.close()
    finally:
        srv.stop(grace=1)
    assert grpc.StatusCode.DEADLINE_EXCEEDED in codes and set(codes) <= {
        grpc.StatusCode.OK,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
    assert runs < len(codes), "requests whose deadline had passed were still run"


def test_server_preprocessing_is_exactly_adapt_imageio(stub):
    """The echo model returns its input: the server's pixels must equal to_model_pixels (squash mode here)."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(23, 37, 3), dtype=np.uint8), "RGB")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    answer = stub.Classify(pb.ClassifyRequest(image=buffer.getvalue(), model="echo"))
    served = np.zeros(6 * 6 * 3, dtype=np.float32)
    for score in answer.scores:
        served[int(score.label[1:])] = score.probability
    expected = to_model_pixels(decode_image(buffer.getvalue()), 6, "squash")
    np.testing.assert_array_equal(served.reshape(6, 6, 3), expected.astype(np.float32))
    assert not np.array_equal(expected, to_model_pixels(decode_image(buffer.getvalue()), 6, "shortest"))


def test_concurrent_clients_are_batched_and_each_gets_its_own_answer(server):
    n_clients, rounds = 8, 6
    barrier = threading.Barrier(n_clients)
    results, errors = [], []

    def client(k: int) -> None:
        with InspectionClient(server.address, timeout=10) as c:
            for r in range(rounds):
                brightness = (37 * k + 53 * r) % 256
                barrier.wait(timeout=10)
                try:
                    answer = c.classify(image_bytes(brightness, seed=k))
                    results.append((brightness, answer.label, answer.batch_size))
                except grpc.RpcError as err:  # pragma: no cover - reported below
                    errors.append(err)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == n_clients * rounds
    wrong = [(b, label) for b, label, _ in results if abs(b - 128) > 12 and label != expected_label(b)]
    assert not wrong
    assert max(size for _, _, size in results) > 1


def test_health_is_serving_and_reflection_lists_the_services(server):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "adapt.inspection.v1.InspectionService"):
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=service)).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        assert {"adapt.inspection.v1.InspectionService", "grpc.health.v1.Health"} <= set(services)
        method = (
            DescriptorPool(database)
            .FindServiceByName("adapt.inspection.v1.InspectionService")
            .FindMethodByName("Classify")
        )
        assert method.input_type.fields_by_name["image"].number == 1
    assert healthcheck.main([server.address]) == 0
    assert healthcheck.check(f"127.0.0.1:{free_port()}", timeout=0.5) == "UNREACHABLE"


def test_metrics_endpoint_counts_requests_and_batches(server, stub):
    stub.Classify(pb.ClassifyRequest(image=image_bytes(0)))
    with pytest.raises(grpc.RpcError):
        stub.Classify(pb.ClassifyRequest(image=b"junk"))
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert 'adapt_requests_total{code="OK",method="Classify"}' in text
    assert 'adapt_requests_total{code="INVALID_ARGUMENT",method="Classify"}' in text
    assert 'adapt_batch_size_count{model="tiny"}' in text
    assert 'adapt_model_info{model="tiny",source=' in text and 'adapt_queue_depth{model="tiny"}' in text


# -- feedback ----------------------------------------------------------------------------------


def test_feedback_is_stored_as_a_dataset(stub, server):
    data_dir = Path(server.config.data_dir)
    good = stub.Classify(pb.ClassifyRequest(image=image_bytes(10), request_id="fb-1"))
    stored = stub.SubmitFeedback(pb.SubmitFeedbackRequest(request_id="fb-1", label="defect", note="scratch at edge"))
    assert stored.stored_path == "defect/fb-1.png" and stored.predicted == good.label == "good"
    # not classified here, image sent along (through the client library)
    with InspectionClient(server.address, timeout=10) as client:
        sent = client.submit_feedback("fb-2", "good", image=image_bytes(20, fmt="JPEG"))
    assert sent.stored_path == "good/fb-2.jpg"
    with open(data_dir / "feedback.csv", newline="") as fh:
        rows = {r["request_id"]: r for r in csv.DictReader(fh)}
    assert rows["fb-1"]["path"] == "defect/fb-1.png" and rows["fb-1"]["label"] == "defect"
    assert rows["fb-1"]["predicted"] == "good" and rows["fb-1"]["model_version"] == "1"
    assert rows["fb-1"]["note"] == "scratch at edge" and rows["fb-2"]["path"] == "good/fb-2.jpg"
    assert all((data_dir / r["path"]).is_file() for r in rows.values())
    assert decode_image((data_dir / "defect/fb-1.png").read_bytes()).size == (40, 30)


@pytest.mark.parametrize(
    "request_, code",
    [
        (pb.SubmitFeedbackRequest(request_id="never-seen", label="good"), grpc.StatusCode.NOT_FOUND),
        (
            pb.SubmitFeedbackRequest(request_id="fb-3", label="scratch", image=image_bytes(1)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.SubmitFeedbackRequest(request_id="fb-3", label="../../etc", image=image_bytes(1)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.SubmitFeedbackRequest(request_id="../fb", label="good", image=image_bytes(1)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (pb.SubmitFeedbackRequest(request_id="fb-3", label="good", image=b"nope"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_feedback_is_refused(stub, request_, code):
    assert _code(lambda: stub.SubmitFeedback(request_)) == code


# -- model lifecycle -----------------------------------------------------------------------------


def _hammer(address: str, stop: threading.Event, answers: list, failures: list) -> None:
    with InspectionClient(address, timeout=10, retries=0) as client:
        while not stop.is_set():
            try:
                answers.append(client.classify(image_bytes(240)))
            except grpc.RpcError as err:
                failures.append(err)


def test_hot_reload_of_a_replaced_file_loses_no_request(tmp_path):
    path = make_tiny_onnx(tmp_path / "model.onnx", version="1")
    srv = start_server([path], tmp_path / "fb", reload_interval=0.1)
    stop, answers, failures = threading.Event(), [], []
    threads = [threading.Thread(target=_hammer, args=(srv.address, stop, answers, failures)) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)
        make_tiny_onnx(tmp_path / "model.onnx", version="2")  # atomic rename over the served file
        deadline = time.monotonic() + 10
        while not (answers and answers[-1].model_version == "2") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
        srv.stop(grace=2)
    versions = [a.model_version for a in answers]
    assert not failures
    assert versions[0] == "1" and versions[-1] == "2"
    assert all(a.label == "defect" for a in answers)
    assert versions.index("2") > 0 and "1" not in versions[versions.index("2") + len(threads) :]


class FakeRegistry:
    """An injectable source: the 'alias' points at whatever version the test says."""

    watchable = True

    def __init__(self, files: dict[str, Path]):
        self.files, self.current, self.uri, self.name = files, "1", "models:/fake@champion", "fake"

    def poll(self) -> str:
        return self.current

    def fetch(self, token: str) -> Artifact:
        return Artifact(self.files[token], name=self.name, version=token)


def test_alias_move_is_picked_up_and_a_model_arriving_late_flips_health(tmp_path):
    files = {v: make_tiny_onnx(tmp_path / f"v{v}.onnx", version=f"file-{v}") for v in ("1", "2")}
    registry = FakeRegistry(files)
    srv = start_server(["unused"], tmp_path / "fb", sources=[registry], reload_interval=0.1)
    try:
        client = InspectionClient(srv.address)
        assert client.classify(image_bytes(0)).model_version == "1"  # the registry's version, not the file's
        registry.current = "2"
        deadline = time.monotonic() + 10
        while client.classify(image_bytes(0)).model_version != "2":
            assert time.monotonic() < deadline, "alias move not picked up"
            time.sleep(0.05)
        assert client.list_models()[0].name == "fake"
        client.close()
    finally:
        srv.stop(grace=1)

    late = tmp_path / "late.onnx"
    srv = start_server([late], tmp_path / "fb", reload_interval=0.1, wait_for_model=True)
    try:
        stub, channel = stub_for(srv.address)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _code(lambda: stub.Classify(pb.ClassifyRequest(image=image_bytes(0)))) == grpc.StatusCode.UNAVAILABLE
        make_tiny_onnx(late)
        deadline = time.monotonic() + 10
        while health.Check(health_pb2.HealthCheckRequest()).status != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "late model never loaded"
            time.sleep(0.05)
        assert stub.Classify(pb.ClassifyRequest(image=image_bytes(0))).label == "good"
        channel.close()
    finally:
        srv.stop(grace=1)


# -- security ----------------------------------------------------------------------------------


def test_token_auth_guards_the_service_and_reflection_but_not_health(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# tokens\nright-token\n")
    srv = start_server([make_tiny_onnx(tmp_path / "m.onnx")], tmp_path / "fb", token_file=str(tokens))
    try:
        request = pb.ClassifyRequest(image=image_bytes(0))
        stub, channel = stub_for(srv.address)
        assert _code(lambda: stub.Classify(request)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: stub.Classify(request, metadata=[("authorization", "Bearer wrong")])) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert _code(lambda: list(stub.ClassifyStream(iter([request])))) == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Classify(request, metadata=[("authorization", "Bearer right-token")]).label == "good"
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

        with pytest.raises(grpc.RpcError) as info:
            ProtoReflectionDescriptorDatabase(channel).get_services()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel.close()
        with InspectionClient(srv.address, token="right-token") as client:
            assert client.classify(image_bytes(255)).label == "defect"
    finally:
        srv.stop(grace=1)


def test_tls_and_mtls(tmp_path):
    certs = make_certs(tmp_path / "certs")
    model = make_tiny_onnx(tmp_path / "m.onnx")
    srv = start_server([model], tmp_path / "fb", tls_cert=str(certs["server_cert"]), tls_key=str(certs["server_key"]))
    try:
        with InspectionClient(srv.address, root_cert=certs["ca"], timeout=5) as client:
            assert client.classify(image_bytes(250)).label == "defect"
        with InspectionClient(srv.address, timeout=2, retries=0) as plain:
            assert _code(lambda: plain.classify(image_bytes(0))) == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop(grace=1)
    srv = start_server(
        [model],
        tmp_path / "fb",
        tls_cert=str(certs["server_cert"]),
        tls_key=str(certs["server_key"]),
        tls_ca=str(certs["ca"]),
    )
    try:
        with InspectionClient(
            srv.address,
            root_cert=certs["ca"],
            client_cert=certs["client_cert"],
            client_key=certs["client_key"],
            timeout=5,
        ) as client:
            assert client.classify(image_bytes(0)).label == "good"
        with InspectionClient(srv.address, root_cert=certs["ca"], timeout=2, retries=0) as no_cert:
            assert _code(lambda: no_cert.classify(image_bytes(0))) == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop(grace=1)
