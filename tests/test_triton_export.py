"""``adapt export --format triton``: a model repository that Triton's own model_config proto accepts
(parsed with tritonclient's ``model_config_pb2``, no server needed) and that matches the ONNX graph."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
from google.protobuf import text_format
from serving_fixtures import make_tiny_onnx

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient (test extra)")

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
_ORT_TO_TRITON = {"tensor(uint8)": "TYPE_UINT8", "tensor(float)": "TYPE_FP32"}


def _export(*args: str) -> subprocess.CompletedProcess:
    # a fresh interpreter: the exporter must work without torch (it only reads the ONNX graph)
    code = "import sys; from adapt.cli import main; rc = main(sys.argv[1:]); assert 'torch' not in sys.modules; sys.exit(rc)"
    return subprocess.run([sys.executable, "-c", code, "export", "--format", "triton", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_repository_validates_against_tritons_model_config_and_the_graph(tmp_path):
    onnx_path = make_tiny_onnx(tmp_path / "tiny.onnx", labels=("good", "crack", "finger"), image_size=32, name="line-3 panel")
    proc = _export("--model", str(onnx_path), "--out", str(tmp_path / "repo"), "--max-batch-size", "16")
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "repo" / "line-3_panel"  # the model name, made a valid folder name
    assert "tritonserver --model-repository" in proc.stdout

    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == folder.name and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16 and config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds > 0

    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in declared] == [t.name for t in actual]
        for tensor, graph in zip(declared, actual, strict=True):
            assert model_config_pb2.DataType.Name(tensor.data_type) == _ORT_TO_TRITON[graph.type]
            assert list(tensor.dims) == list(graph.shape[1:])  # the batch dimension is Triton's
    assert list(config.input[0].dims) == [32, 32, 3]
    (probabilities,) = config.output
    assert probabilities.label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text().splitlines() == ["good", "crack", "finger"]
    assert (folder / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()


def test_a_file_that_is_not_a_model_is_one_clear_error(tmp_path):
    bogus = tmp_path / "notes.onnx"
    bogus.write_text("not a graph")
    proc = _export("--model", str(bogus), "--out", str(tmp_path / "repo"))
    assert proc.returncode != 0
    assert "not an ONNX model" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "repo").exists()
