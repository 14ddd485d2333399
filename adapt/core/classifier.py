"""The one classifier contract every adaptation method ends in.

``ImageClassifier`` maps a batch of RGB pixels (``uint8`` or float in 0..255, shape
``[N, H, W, 3]``, already resized by ``adapt.contract.imageio``) to class probabilities ``[N, C]``. It
holds the image encoder (``adapt.core.encoders``: the joint embedding and/or pooled mid-level CNN
features), the normalisation that matches it and a head over L2-normalised features. Export, evaluation, serving and the registry only ever see this.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adapt.core.anomaly_head import PatchCoreHead
from adapt.contract.modelmeta import ClassifierMetadata
from adapt.core.encoders import PATCHES, EncoderSpec, ImageEncoder

logger = logging.getLogger(__name__)

CLASSIFIER_FORMAT = "adapt-classifier/1"


class PixelNormalizer(nn.Module):
    """``[N, H, W, 3]`` pixels in 0..255 -> normalised ``[N, 3, H, W]`` float, as the encoder expects."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)))
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).to(torch.float32)
        return x * self.scale - self.shift


class CosineHead(nn.Module):
    """``scale * f @ W.T (+ bias)`` with fixed class embeddings W (zero-shot, CoOp, LoRA)."""

    kind = "cosine"

    def __init__(self, class_embeddings: torch.Tensor, logit_scale: float, logit_bias: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", F.normalize(class_embeddings.detach().float(), dim=-1))
        self.logit_scale = float(logit_scale)
        self.logit_bias = float(logit_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * features @ self.weight.T + self.logit_bias

    def config(self) -> dict:
        return {"num_classes": self.weight.shape[0], "dim": self.weight.shape[1], "logit_scale": self.logit_scale, "logit_bias": self.logit_bias}

    @classmethod
    def from_config(cls, cfg: dict) -> "CosineHead":
        return cls(torch.zeros(cfg["num_classes"], cfg["dim"]), cfg["logit_scale"], cfg.get("logit_bias", 0.0))


class LinearHead(nn.Module):
    """``f @ W.T + b`` on normalised features (linear probe)."""

    kind = "linear"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight.float())
            self.linear.bias.copy_(bias.float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def config(self) -> dict:
        return {"num_classes": self.linear.out_features, "dim": self.linear.in_features}

    @classmethod
    def from_config(cls, cfg: dict) -> "LinearHead":
        return cls(torch.zeros(cfg["num_classes"], cfg["dim"]), torch.zeros(cfg["num_classes"]))


class TipAdapterHead(nn.Module):
    """Tip-Adapter: zero-shot logits plus ``alpha * exp(-beta * (1 - f @ keys.T)) @ values``.

    With ``text_dim`` the features are ``[embedding | cache features]`` (``adapt.core.encoders``): the
    zero-shot term reads the first ``text_dim`` values, the cache the rest, each re-normalised.
    """

    kind = "tip-adapter"

    def __init__(self, text_weight, keys, values, alpha: float, beta: float, logit_scale: float, text_dim: int = 0,
                 text_weight_scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("text_weight", F.normalize(text_weight.detach().float(), dim=-1))
        self.keys = nn.Parameter(F.normalize(keys.detach().float(), dim=-1))
        self.register_buffer("values", values.detach().float())
        self.alpha, self.beta, self.logit_scale = float(alpha), float(beta), float(logit_scale)
        self.text_dim = int(text_dim)
        self.text_weight_scale = float(text_weight_scale)  # gamma: 1 as in the paper, 0 = the cache alone

    def split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features for the zero-shot term, features for the cache)."""
        if not self.text_dim:
            return features, features
        return F.normalize(features[:, : self.text_dim], dim=-1), F.normalize(features[:, self.text_dim :], dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        text_part, cache_part = self.split(features)
        zero_shot = (self.text_weight_scale * self.logit_scale) * text_part @ self.text_weight.T
        affinity = cache_part @ self.keys.T
        cache = torch.exp(-self.beta * (1.0 - affinity)) @ self.values
        return zero_shot + self.alpha * cache

    def config(self) -> dict:
        return {
            "num_classes": self.values.shape[1],
            "dim": self.keys.shape[1],
            "num_keys": self.keys.shape[0],
            "alpha": self.alpha,
            "beta": self.beta,
            "logit_scale": self.logit_scale,
            "text_dim": self.text_dim,
            "text_width": self.text_weight.shape[1],
            "text_weight_scale": self.text_weight_scale,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> "TipAdapterHead":
        c, d, n = cfg["num_classes"], cfg["dim"], cfg["num_keys"]
        text = torch.zeros(c, cfg.get("text_width", d))
        return cls(text, torch.ones(n, d), torch.zeros(n, c), cfg["alpha"], cfg["beta"], cfg["logit_scale"], cfg.get("text_dim", 0),
                   cfg.get("text_weight_scale", 1.0))


class CenteredLinearHead(nn.Module):
    """``normalize(f - c(f)) @ W.T + b`` with ``c(f)`` the nearest of fixed centroids (one centroid:
    plain centering). The centroids come from a line's unlabeled images (``adapt.methods.semisup``)."""

    kind = "centered-linear"

    def __init__(self, centroids: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("centroids", centroids.detach().float())
        self.linear = LinearHead(weight, bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # squared distances written out (ONNX has no cdist); the |f|^2 term does not change the argmin
        distances = (self.centroids * self.centroids).sum(dim=1) - 2.0 * features @ self.centroids.T
        nearest = distances.argmin(dim=1)
        return self.linear(F.normalize(features - self.centroids[nearest], dim=-1))

    def config(self) -> dict:
        return {"clusters": self.centroids.shape[0], **self.linear.config()}

    @classmethod
    def from_config(cls, cfg: dict) -> "CenteredLinearHead":
        n, d = cfg["num_classes"], cfg["dim"]
        return cls(torch.zeros(cfg["clusters"], d), torch.zeros(n, d), torch.zeros(n))


HEADS = {h.kind: h for h in (CosineHead, LinearHead, TipAdapterHead, CenteredLinearHead, PatchCoreHead)}


@dataclass
class ClassifierInfo:
    """Everything besides weights that travels with a classifier (the ONNX metadata comes from it)."""

    labels: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    resize_mode: str = "shortest"
    reject_threshold: float = 0.0
    method: str = ""
    backbone: str = ""
    arch: str = ""
    model_cfg: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # method hyper-parameters, for the record
    encoder: dict = field(default_factory=lambda: EncoderSpec().to_dict())  # adapt.core.encoders.EncoderSpec
    anomaly_threshold: float = 0.0  # anomaly heads: patch score at the decision threshold (heatmap scale)

    def metadata(self, model_name: str = "", model_version: str = "") -> ClassifierMetadata:
        return ClassifierMetadata(
            labels=list(self.labels),
            image_size=self.image_size,
            resize_mode=self.resize_mode,
            reject_threshold=self.reject_threshold,
            model_name=model_name,
            model_version=model_version,
            method=self.method,
            backbone=self.backbone,
            mean=list(self.mean),
            std=list(self.std),
            anomaly_threshold=self.anomaly_threshold,
        )


class ImageClassifier(nn.Module):
    """pixels ``[N, H, W, 3]`` -> probabilities ``[N, C]``: normalise, encode, L2-normalise, head, softmax."""

    def __init__(self, encoder: ImageEncoder, head: nn.Module, info: ClassifierInfo) -> None:
        super().__init__()
        if len(info.labels) < 2:
            raise ValueError("a classifier needs at least two classes")
        if not isinstance(encoder, ImageEncoder):
            raise TypeError("ImageClassifier takes an adapt.core.encoders.ImageEncoder")
        self.normalize = PixelNormalizer(info.mean, info.std)
        self.encoder = encoder
        self.head = head
        info.encoder = encoder.spec.to_dict()
        self.info = info

    @property
    def labels(self) -> list[str]:
        return list(self.info.labels)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.encoder(self.normalize(pixels))
        return features if self.encoder.spec.parts == (PATCHES,) else F.normalize(features, dim=-1)

    @property
    def has_anomaly_map(self) -> bool:
        """Whether ``forward_with_map`` gives a map of where the model sees a defect."""
        return hasattr(self.head, "forward_with_map")

    def forward_with_map(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities ``[N, C]``, anomaly map ``[N, h, w]``) for heads that have one."""
        logits, anomaly_map = self.head.forward_with_map(self.features(pixels))
        return torch.softmax(logits, dim=-1), anomaly_map

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(pixels), dim=-1)


def save_classifier(classifier: ImageClassifier, path: str | Path) -> Path:
    """Write a classifier to one file (torch, weights + config), loadable with ``load_classifier``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CLASSIFIER_FORMAT,
        "info": asdict(classifier.info),
        "head_kind": classifier.head.kind,
        "head_config": classifier.head.config(),
        "head_state": classifier.head.state_dict(),
        "encoder_state": classifier.encoder.state_dict(),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> ImageClassifier:
    import open_clip

    payload = torch.load(path, map_location=device, weights_only=True)
    if payload.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not an adapt classifier file")
    info = ClassifierInfo(**payload["info"])
    cfg = info.model_cfg
    # open_clip's model class from the config saved with the classifier; only its image tower is kept
    visual = open_clip.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg.get("quick_gelu", False)).visual
    encoder = ImageEncoder(visual, EncoderSpec.from_dict(info.encoder))
    encoder.load_state_dict(payload["encoder_state"])
    head = HEADS[payload["head_kind"]].from_config(payload["head_config"])
    head.load_state_dict(payload["head_state"])
    return ImageClassifier(encoder, head, info).to(device).eval()
