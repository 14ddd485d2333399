"""What every adaptation method receives and returns.

A method takes an ``AdaptContext`` (backbone, few-shot train/val split, class descriptions,
device, seed, the training loop and a metrics callback, both handed in by the pipeline) and a
typed config, and returns a ``FitResult`` whose
``classifier`` follows the one contract in ``adapt.core.classifier``. Hyper-parameters and early
stopping may only look at ``split.val``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from adapt.core.backbone import Backbone
from adapt.core.classifier import ClassifierInfo
from adapt.core.encoders import EncoderSpec, ImageEncoder
from adapt.data.fewshot import FewShotSplit
from adapt.data.images import ImageSet
from adapt.methods.names import Method


@dataclass
class TrainConfig:
    """Settings of the supervised loop (``adapt.training.supervised.train_classifier``) that a method asks for."""

    epochs: int = 50  # maximum epochs
    lr: float = 2e-3  # peak learning rate (AdamW, linear warmup then cosine decay)
    weight_decay: float = 0.01
    batch_size: int = 32
    warmup_epochs: int = 1
    patience: int = 10  # stop after this many epochs without a better validation score
    grad_clip: float = 1.0  # max gradient norm, 0 = off
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be positive")


@dataclass
class TrainResult:
    """What a training loop reports back (the trained net itself is updated in place)."""

    best_epoch: int
    best_val_balanced_accuracy: float
    epochs_run: int
    history: list[dict[str, float]]


# (net, train_data, (val_x, val_y), TrainConfig) -> TrainResult; trains net in place and leaves it
# holding its best-validation weights. The Lightning implementation is adapt.training.supervised.loop().
TrainLoop = Callable[..., TrainResult]


@dataclass
class AdaptContext:
    backbone: Backbone
    split: FewShotSplit
    descriptions: dict[str, str] = field(default_factory=dict)  # class -> words for prompts
    device: str = "cpu"
    seed: int = 0
    progress: bool = True
    use_feature_cache: bool = True
    train: TrainLoop | None = None  # the loop for methods that train (CoOp, LoRA, Tip-Adapter-F)
    on_metrics: Callable[[dict[str, float], int], None] | None = None  # curves from loops that are not ``train``
    unlabeled: ImageSet | None = None  # unlabeled images of the line (never test images), for semi-supervised methods
    # frozen features already computed in this run, per (encoder, view, image): cross-validation fits
    # on many subsets of the same images and computes each image's features once (shared by copies)
    feature_memo: dict = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.split.train.classes

    def spec(self, use: str, views: int = 1, pooling: str = "avg") -> EncoderSpec:
        """The encoder for ``use`` (``Backbone.encoder_spec``) with ``views`` > 1 dihedral views
        averaged (test-time augmentation) and its stage maps pooled by ``pooling`` (``adapt.core.encoders``)."""
        return replace(self.backbone.encoder_spec(use), views=views, pooling=pooling)

    def encoder(self, use: str, views: int = 1, pooling: str = "avg") -> ImageEncoder:
        """A copy of the backbone's image tower that computes the features of ``spec(use, views,
        pooling)``, for a classifier to own."""
        import copy

        return ImageEncoder(copy.deepcopy(self.backbone.model.visual), self.spec(use, views, pooling))

    def train_net(self, net: torch.nn.Module, train_data, val_data, cfg: TrainConfig) -> TrainResult:
        if self.train is None:
            raise ValueError("this method trains: give the AdaptContext a loop, e.g. train=adapt.training.supervised.loop()")
        return self.train(net, train_data, val_data, cfg)

    def report(self, metrics: dict[str, float], step: int) -> None:
        if self.on_metrics is not None:
            self.on_metrics(metrics, step)

    def info(self, method: Method | str, extra: dict | None = None) -> ClassifierInfo:
        b = self.backbone
        return ClassifierInfo(
            labels=list(self.classes),
            image_size=b.image_size,
            mean=list(b.mean),
            std=list(b.std),
            resize_mode=b.resize_mode,
            method=getattr(method, "value", method),
            backbone=b.describe(),
            arch=b.arch,
            model_cfg=b.model_cfg,
            extra=dict(extra or {}),
        )


@dataclass
class FitResult:
    classifier: torch.nn.Module  # adapt.core.classifier.ImageClassifier
    params: dict  # the hyper-parameters used (chosen ones included)
    val_probabilities: np.ndarray | None = None  # held-out probabilities for the reject threshold: on split.val ...
    val_labels: np.ndarray | None = None  # ... or, when given, on images with these labels (e.g. out-of-fold over train + val)
    val_source: str = ""  # what the held-out probabilities are, for the record ("cross-validation (64 labelled images)")
    history: list[dict] = field(default_factory=list)  # per-epoch curves, if any
    notes: list[str] = field(default_factory=list)  # what the user should know, e.g. "no fine-tuned epoch beat the start"
    # probabilities of the classifier for other images the cheap way (its head on cached frozen
    # features, as the exported graph computes them); cross-validation scores held-out images with it
    predict: Callable[[ImageSet], np.ndarray] | None = None
