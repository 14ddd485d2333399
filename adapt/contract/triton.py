"""An exported classifier as a Triton Inference Server model repository (``adapt export --format triton``).

Layout (what ``tritonserver --model-repository REPO`` loads)::

    REPO/NAME/config.pbtxt      platform "onnxruntime_onnx", dynamic batching, inputs/outputs
    REPO/NAME/labels.txt        one class name per line, in output order (Triton's classification extension)
    REPO/NAME/1/model.onnx      the graph, unchanged (preprocessing inside: uint8 pixels in)

Input/output names, data types and dims are read from the ONNX graph itself (the ``onnx`` package,
no torch); a symbolic first dimension is the batch (``max_batch_size`` > 0), otherwise the model
takes no batching. Triton applies none of the server's post-processing: clients get the
probabilities (or top-k labels via the classification extension) and decide ``needs_review``
with the reject threshold from the model's metadata themselves.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from adapt.contract.modelmeta import ClassifierMetadata, from_props
from adapt.errors import AdaptError

LABELS_FILE = "labels.txt"
CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"  # Triton's default_model_filename for platform onnxruntime_onnx (its rule, not ours)
# ONNX TensorProto element type names -> Triton model_config DataType names
_TRITON_TYPES = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64", "FLOAT16": "TYPE_FP16", "FLOAT": "TYPE_FP32", "DOUBLE": "TYPE_FP64",
    "BFLOAT16": "TYPE_BF16", "STRING": "TYPE_STRING",
}  # fmt: skip


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton's name, e.g. TYPE_UINT8
    dims: tuple[int, ...]  # -1 = variable; the batch dimension excluded when batching


@dataclass(frozen=True)
class TritonModel:
    """What ``config.pbtxt`` says about one exported classifier."""

    name: str
    max_batch_size: int  # 0 = the model takes no batch dimension
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...]
    label_output: str  # the output the labels file belongs to
    max_queue_delay_us: int

    def config_text(self) -> str:
        lines = [f'name: "{self.name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {self.max_batch_size}"]
        for field, specs in (("input", self.inputs), ("output", self.outputs)):
            entries = []
            for spec in specs:
                label = f'\n    label_filename: "{LABELS_FILE}"' if spec.name == self.label_output else ""
                dims = ", ".join(str(d) for d in spec.dims)
                entries.append(
                    f'  {{\n    name: "{spec.name}"\n    data_type: {spec.data_type}\n    dims: [ {dims} ]{label}\n  }}'
                )
            lines.append(f"{field} [\n" + ",\n".join(entries) + "\n]")
        if self.max_batch_size:
            lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {self.max_queue_delay_us}\n}}")
        return "\n".join(lines) + "\n"


def describe(onnx_path: str | Path, *, name: str = "", max_batch_size: int = 32, max_queue_delay_us: int = 2000) -> TritonModel:
    """Read the graph's inputs/outputs and the classifier metadata of an exported ONNX file."""
    import onnx

    path = Path(onnx_path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for non-models
        raise AdaptError(f"{path}: not an ONNX model ({exc})") from exc
    meta: ClassifierMetadata = from_props({p.key: p.value for p in model.metadata_props}, str(path))
    initializers = {t.name for t in model.graph.initializer}
    inputs = [_shape(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_shape(v) for v in model.graph.output]
    batched = all(dims and dims[0] is None for _, _, dims in inputs + outputs)
    probabilities = next((o for o in outputs if o[2] and o[2][-1] == len(meta.labels)), None)
    if probabilities is None:
        raise AdaptError(f"{path}: no output with one score per label ({len(meta.labels)})")
    return TritonModel(
        name=_model_name(name or meta.model_name or path.stem),
        max_batch_size=max_batch_size if batched else 0,
        inputs=tuple(_spec(v, batched) for v in inputs),
        outputs=tuple(_spec(v, batched) for v in outputs),
        labels=tuple(meta.labels),
        label_output=probabilities[0],
        max_queue_delay_us=max_queue_delay_us,
    )


def write_repository(
    onnx_path: str | Path, repository: str | Path, *, name: str = "", max_batch_size: int = 32, max_queue_delay_us: int = 2000
) -> Path:
    """Write ``REPO/NAME/{config.pbtxt, labels.txt, 1/model.onnx}``; returns the model's folder."""
    spec = describe(onnx_path, name=name, max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us)
    folder = Path(repository) / spec.name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    if Path(onnx_path).resolve() != (folder / "1" / MODEL_FILE).resolve():
        shutil.copyfile(onnx_path, folder / "1" / MODEL_FILE)
    (folder / LABELS_FILE).write_text("".join(f"{label}\n" for label in spec.labels))
    (folder / CONFIG_FILE).write_text(spec.config_text())
    return folder


def _shape(value) -> tuple[str, str, list[int | None]]:
    import onnx

    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return value.name, onnx.TensorProto.DataType.Name(tensor.elem_type), dims


def _spec(value: tuple[str, str, list[int | None]], batched: bool) -> TensorSpec:
    name, onnx_type, dims = value
    if onnx_type not in _TRITON_TYPES:
        raise AdaptError(f"tensor {name!r} has type {onnx_type}, which Triton does not take")
    kept = dims[1:] if batched else dims
    return TensorSpec(name, _TRITON_TYPES[onnx_type], tuple(-1 if d is None else d for d in kept))


def _model_name(name: str) -> str:
    """A folder name Triton accepts: letters, digits, ``_ - .``."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"
    return cleaned
