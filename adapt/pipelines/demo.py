"""``adapt demo``: the whole product once, end to end, on embedded defaults.

backbone (the default one; built first when missing, which the CLI announces) -> few-shot adaptation on ELPV -> MLflow run +
registered version with ``champion`` -> the gRPC inspection service (in this process) serving
``models:/NAME@champion`` -> the inspection client classifies the held-out test images over
gRPC -> accuracy, throughput, latency and review rate, measured on what came back.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adapt.defaults import DEFAULT_ARCH

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    data: str = "elpv"
    method: str = "auto"  # adapt.methods.registry.AUTO: chosen by cross-validation
    budget_minutes: float = 3.0  # auto: time for cross-validating the candidates
    review_budget: float = 0.25  # at most this share of parts to human review
    shots: int = 16
    seed: int = 1
    backbone: str = DEFAULT_ARCH
    pretrained: str = "default"
    output_dir: Path = Path("runs") / "demo"
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    model_name: str = "adapt-demo"
    port: int = 0  # 0 = any free port
    max_test_images: int = 0  # 0 = the whole held-out split
    latency_samples: int = 50  # sequential unary calls for the latency numbers
    progress: bool = True


@dataclass
class DemoResult:
    retrain: object  # adapt.pipelines.retrain.RetrainResult
    tracking: list[str]
    served_version: str
    tracking_uri: str
    n_images: int
    accuracy: float
    balanced_accuracy: float
    needs_review_rate: float
    stream_images_per_s: float
    latency_ms_p50: float
    latency_ms_p99: float
    server_address: str
    extra: dict = field(default_factory=dict)


def _image_bytes(images, i: int) -> bytes:
    """What a camera PC would send: the file's bytes, or a PNG encoding of a generated image."""
    path = Path(images.root) / images.keys[i]
    if path.is_file():
        return path.read_bytes()
    buffer = io.BytesIO()
    images.load(i).save(buffer, format="PNG")
    return buffer.getvalue()


def run_demo(cfg: DemoConfig) -> DemoResult:
    from adapt.data import load_dataset
    from adapt.errors import AdaptError
    from adapt.core.evaluation import compute_metrics
    from adapt.pipelines.retrain import RetrainConfig, run_retrain
    from adapt.pipelines.retrain_tracking import RetrainTracker
    from adapt.tracking.store import preflight, resolve_tracking_uri
    from services.client import InspectionClient
    from services.server import InspectionServer, ServeConfig

    uri = resolve_tracking_uri(cfg.tracking_uri)
    preflight(uri)
    out = Path(cfg.output_dir)
    tracker = RetrainTracker(uri, experiment=f"demo-{cfg.data.split(':')[0]}", register=cfg.model_name)
    retrain_cfg = RetrainConfig(
        data=cfg.data, method=cfg.method, shots=cfg.shots, seed=cfg.seed, backbone=cfg.backbone, pretrained=cfg.pretrained,
        output_dir=out / "retrain", progress=cfg.progress, model_name=cfg.model_name,
        budget_minutes=cfg.budget_minutes, review_budget=cfg.review_budget,
    )
    result = run_retrain(retrain_cfg, tracker)
    if tracker.failure:
        raise AdaptError(f"MLflow: {tracker.failure}")

    test = load_dataset(cfg.data).test
    idx = np.arange(len(test))
    if cfg.max_test_images and cfg.max_test_images < len(test):
        idx = np.sort(np.random.default_rng(0).choice(len(test), cfg.max_test_images, replace=False))
    payloads = [_image_bytes(test, int(i)) for i in idx]
    labels = test.labels[idx]
    sample = out / "sample"  # a few held-out images for trying `adapt classify` afterwards
    sample.mkdir(parents=True, exist_ok=True)
    for i, payload in zip(idx[:8], payloads[:8]):
        (sample / f"{Path(test.keys[int(i)]).stem}{Path(test.keys[int(i)]).suffix or '.png'}").write_bytes(payload)

    server = InspectionServer(
        ServeConfig(models=(f"models:/{cfg.model_name}@champion",), host="127.0.0.1", port=cfg.port, tracking_uri=uri,
                    data_dir=str(out / "feedback"), reload_interval=0)
    ).start()
    try:
        with InspectionClient(server.address, timeout=30.0) as client:
            client.wait_until_ready(30.0)
            info = client.list_models()[0]
            t0 = time.perf_counter()
            responses = list(client.classify_many(payloads, stream=True))
            stream_seconds = time.perf_counter() - t0
            errors = [r.error.message for r in responses if r.HasField("error")]
            if errors:
                raise AdaptError(f"the service rejected {len(errors)} image(s): {errors[0]}")
            latencies = []
            for payload in payloads[: cfg.latency_samples]:
                t = time.perf_counter()
                client.classify(payload)
                latencies.append(1000 * (time.perf_counter() - t))
    finally:
        server.stop(grace=5)

    model_labels = list(info.labels)
    probs = np.zeros((len(responses), len(model_labels)))
    for row, response in zip(probs, responses):
        for score in response.scores:
            row[model_labels.index(score.label)] = score.probability
    class_index = np.array([model_labels.index(c) for c in test.classes])
    metrics = compute_metrics(probs, class_index[labels], model_labels, reject_threshold=result.metrics.get("reject_threshold", 0.0))
    return DemoResult(
        retrain=result,
        tracking=tracker.report(),
        served_version=info.version,
        tracking_uri=uri,
        n_images=len(responses),
        accuracy=metrics["accuracy"],
        balanced_accuracy=metrics["balanced_accuracy"],
        needs_review_rate=float(np.mean([r.needs_review for r in responses])),
        stream_images_per_s=len(responses) / stream_seconds,
        latency_ms_p50=float(np.percentile(latencies, 50)) if latencies else float("nan"),
        latency_ms_p99=float(np.percentile(latencies, 99)) if latencies else float("nan"),
        server_address=server.address,
        extra={"accuracy_on_accepted": metrics["accuracy_on_accepted"]},
    )
