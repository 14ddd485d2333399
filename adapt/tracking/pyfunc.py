"""The exported classifier as an MLflow pyfunc model, so ``mlflow models serve`` can serve it.

This file is logged as the model's code (MLflow "models from code": no pickle); loading the
model runs it, and ``set_model`` at the bottom names the model object.

The model wraps the ONNX file (``artifacts/model.onnx``) and runs it with the contract's
``OnnxRunner`` (the service's session options); it imports only NumPy, Pillow, pandas, ONNX Runtime
and the torch-free ``adapt.contract``, so serving it never loads torch.

Request: a DataFrame with one column ``image`` holding base64-encoded image files (PNG, JPEG,
BMP, TIFF), e.g. ``POST /invocations`` with
``{"dataframe_records": [{"image": "<base64 of part.png>"}]}``.
Response: one row per image with ``label`` (top class), ``probability`` (its probability),
``needs_review`` (top probability below the model's reject threshold) and ``prob_<class>``
for every class.
"""

from __future__ import annotations

import base64
import binascii

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd

from adapt.contract.imageio import ImageDecodeError, bytes_to_model_pixels
from adapt.contract.runtime import OnnxRunner

ONNX_ARTIFACT = "onnx_model"  # pyfunc artifact key of the ONNX file
TORCH_ARTIFACT = "torch_classifier"  # classifier.pt, kept for `adapt export --model models:/...`
IMAGE_COLUMN = "image"
PROB_PREFIX = "prob_"


def signature_for(labels: list[str]):
    """The MLflow signature: ``image`` (base64 string) in; label, probability, needs_review, per-class probabilities out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", "label"), ColSpec("double", "probability"), ColSpec("boolean", "needs_review")]
    outputs += [ColSpec("double", f"{PROB_PREFIX}{label}") for label in labels]
    return ModelSignature(inputs=Schema([ColSpec("string", IMAGE_COLUMN)]), outputs=Schema(outputs))


def input_example(image_size: int) -> pd.DataFrame:
    """A request with one mid-grey PNG: shown in the MLflow UI and checked when the model is logged."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (image_size, image_size), (128, 128, 128)).save(buf, format="PNG")
    return pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(buf.getvalue()).decode("ascii")]})


class OnnxImageClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc around an exported classifier: base64 images in, labels and probabilities out."""

    def load_context(self, context) -> None:
        self.runner = OnnxRunner(context.artifacts[ONNX_ARTIFACT])
        self.meta = self.runner.metadata

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            raise ValueError(f"expected a DataFrame with a column '{IMAGE_COLUMN}' of base64-encoded images")
        labels = self.meta.labels
        pixels = [self._pixels(value, i) for i, value in enumerate(model_input[IMAGE_COLUMN])]
        probs = self.runner.predict_batches([np.stack(pixels)] if pixels else [])
        top = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
        top_p = probs[np.arange(len(probs)), top] if len(probs) else np.zeros(0)
        out = pd.DataFrame({
            "label": [labels[i] for i in top],
            "probability": top_p.astype(np.float64),
            "needs_review": top_p < self.meta.reject_threshold,
        })
        for j, label in enumerate(labels):
            out[f"{PROB_PREFIX}{label}"] = probs[:, j].astype(np.float64)
        return out

    def _pixels(self, value, row: int) -> np.ndarray:
        try:
            data = value if isinstance(value, (bytes, bytearray)) else base64.b64decode(value, validate=True)
            return bytes_to_model_pixels(data, self.meta.image_size, self.meta.resize_mode)
        except (binascii.Error, TypeError, ImageDecodeError) as exc:
            raise ValueError(f"row {row}: '{IMAGE_COLUMN}' is not a base64-encoded image ({exc})") from exc


mlflow.models.set_model(OnnxImageClassifier())
