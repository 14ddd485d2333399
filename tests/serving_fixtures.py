"""Tiny self-made exported classifiers and images for serving tests (no torch, no network).

``make_tiny_onnx`` builds a classifier that follows ``adapt.contract.modelmeta``'s contract and whose
answer depends on the image: the mean brightness picks the class (dark -> first label,
bright -> last), so each request's answer can be checked. ``make_echo_onnx`` returns the
model input itself as "probabilities", to see exactly which pixels the server computed.
"""

from __future__ import annotations

import io
import os
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from adapt.contract.modelmeta import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ClassifierMetadata

OPSET = 17
IR_VERSION = 8


def make_tiny_onnx(
    path: str | Path,
    labels: Sequence[str] = ("good", "defect"),
    image_size: int = 32,
    reject_threshold: float = 0.6,
    name: str = "tiny",
    version: str = "1",
    resize_mode: str = "shortest",
    slow_matmuls: int = 0,
    sharpness: float = 40.0,
) -> Path:
    """Write a brightness classifier: class i is nearest to brightness (i + 0.5) / len(labels).

    With two labels a black image is ``labels[0]`` (p ~ 1), a white one ``labels[-1]``, and
    mid-grey (128) is a coin flip (p ~ 0.5, so ``needs_review`` at the default threshold).
    ``slow_matmuls`` adds that many 256x256 matrix products per batch (a slow model).
    """
    n = len(labels)
    centres = (np.arange(n) + 0.5) / n
    weight = np.tile(2 * sharpness * centres / 3.0, (3, 1)).astype(np.float32)  # [3, C]: mean of channels
    bias = (-sharpness * centres**2).astype(np.float32)  # logits_i = -k (m - c_i)^2 + const
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["channel_mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Div", ["channel_mean", "c255"], ["m"]),
        helper.make_node("MatMul", ["m", "weight"], ["wx"]),
        helper.make_node("Add", ["wx", "bias"], ["logits0"]),
    ]
    inits = [_const("c255", np.float32(255.0)), _const("weight", weight), _const("bias", bias)]
    if slow_matmuls:
        nodes.append(helper.make_node("ReduceSum", ["m"], ["s"], keepdims=0))
        nodes.append(helper.make_node("Mul", ["eye", "s"], ["t0"]))
        for i in range(slow_matmuls):
            nodes.append(helper.make_node("MatMul", [f"t{i}", "eye"], [f"t{i + 1}"]))
        nodes.append(helper.make_node("ReduceSum", [f"t{slow_matmuls}"], ["big"], keepdims=0))
        nodes.append(helper.make_node("Mul", ["big", "zero"], ["nothing"]))
        nodes.append(helper.make_node("Add", ["logits0", "nothing"], ["logits"]))
        inits += [_const("eye", np.eye(256, dtype=np.float32)), _const("zero", np.float32(0.0))]
    else:
        nodes.append(helper.make_node("Identity", ["logits0"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=1))
    meta = ClassifierMetadata(
        list(labels), image_size, resize_mode, reject_threshold, name, version, method="tiny-test"
    )
    return _save(path, nodes, inits, image_size, n, meta)


def make_echo_onnx(path: str | Path, image_size: int = 6, resize_mode: str = "shortest") -> Path:
    """A "classifier" whose scores are its input pixels: label ``p<k>`` scores pixel value k (flattened HWC)."""
    count = image_size * image_size * 3
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["x", "shape"], [OUTPUT_NAME]),
    ]
    inits = [_const("shape", np.array([-1, count], dtype=np.int64))]
    meta = ClassifierMetadata([f"p{k}" for k in range(count)], image_size, resize_mode, 0.0, "echo", "1")
    return _save(path, nodes, inits, image_size, count, meta)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _save(path, nodes, inits, image_size, n_out, meta: ClassifierMetadata) -> Path:
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", image_size, image_size, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", n_out])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="adapt-tests")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # written beside and renamed over, as a real exporter should (a watcher never sees half a file)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(model.SerializeToString())
    os.replace(tmp, path)
    return path


def image_bytes(brightness: int, size: tuple[int, int] = (40, 30), fmt: str = "PNG", seed: int | None = None) -> bytes:
    """An encoded image of the given mean brightness (0..255); ``seed`` adds mild noise."""
    arr = np.full((size[1], size[0], 3), brightness, dtype=np.int16)
    if seed is not None:
        arr += np.random.default_rng(seed).integers(-8, 9, size=arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def expected_label(brightness: int, labels: Sequence[str] = ("good", "defect")) -> str:
    """The tiny model's answer for a uniform image of this brightness."""
    centres = (np.arange(len(labels)) + 0.5) / len(labels)
    return labels[int(np.argmin(np.abs(brightness / 255.0 - centres)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_certs(folder: str | Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate (PEM files)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def issue(subject: str, key, issuer_name, issuer_key, *, ca: bool = False, server: bool = False):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    def write(name: str, cert, key) -> tuple[Path, Path]:
        cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = issue("adapt test CA", ca_key, None, None, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server_cert = issue("localhost", server_key, ca_cert.subject, ca_key, server=True)
    client_cert = issue("camera-pc-01", client_key, ca_cert.subject, ca_key)
    ca_path, _ = write("ca", ca_cert, ca_key)
    server_cert_path, server_key_path = write("server", server_cert, server_key)
    client_cert_path, client_key_path = write("client", client_cert, client_key)
    return {
        "ca": ca_path,
        "server_cert": server_cert_path,
        "server_key": server_key_path,
        "client_cert": client_cert_path,
        "client_key": client_key_path,
    }


def start_server(models: Sequence[str | Path], data_dir: str | Path, sources=None, **options):
    """An ``InspectionServer`` on 127.0.0.1 (free port), started; ``options`` are ``ServeConfig`` fields."""
    from services.hosted import BatchingConfig
    from services.server import InspectionServer, ServeConfig

    batching = {k: options.pop(k) for k in ("max_batch_size", "max_queue_delay_ms", "max_queue") if k in options}
    config = ServeConfig(
        models=tuple(str(m) for m in models),
        host="127.0.0.1",
        port=0,
        data_dir=str(data_dir),
        batching=BatchingConfig(**batching),
        **options,
    )
    return InspectionServer(config, sources=sources).start()


def stub_for(address: str, channel_credentials=None):
    """A raw InspectionService stub (and its channel) for protocol-level assertions."""
    import grpc

    from services.proto import inspection_pb2_grpc

    channel = (
        grpc.secure_channel(address, channel_credentials) if channel_credentials else grpc.insecure_channel(address)
    )
    return inspection_pb2_grpc.InspectionServiceStub(channel), channel
