"""Baseline: a small CNN trained from scratch on the same few shots, in the same harness.

Same inputs as every method (uint8 pixels at the backbone's input size), same augmentation and
the same Lightning loop with early stopping on the few-shot validation split
(``adapt.training.supervised``), so the comparison isolates what pretraining buys.
"""

from __future__ import annotations

import torch
from torch import nn

from adapt.core.classifier import PixelNormalizer


class SmallCNN(nn.Module):
    """Four conv blocks (32-64-128-256 channels) + global average pooling + linear: ~0.4M parameters."""

    def __init__(self, num_classes: int, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)) -> None:
        super().__init__()
        self.normalize = PixelNormalizer(mean, std)
        layers, width = [], 3
        for out in (32, 64, 128, 256):
            layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            width = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(0.3), nn.Linear(width, num_classes))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(pixels)))


def fit_cnn(split, image_size: int, seed: int, epochs: int = 60, progress: bool = False) -> nn.Module:
    from adapt.core.features import labels_tensor, load_pixels
    from adapt.methods.lora import AugmentedPixels
    from adapt.training.supervised import TrainConfig, train_classifier

    torch.manual_seed(seed)
    net = SmallCNN(len(split.train.classes))
    train_px = load_pixels(split.train, image_size, progress=False)
    val_px = load_pixels(split.val, image_size, progress=False)
    train_classifier(
        net,
        AugmentedPixels(train_px, labels_tensor(split.train), augment=True),
        (val_px, labels_tensor(split.val)),
        TrainConfig(epochs=epochs, lr=3e-3, batch_size=16, patience=15, weight_decay=1e-4),
        progress=progress,
        seed=seed,
    )
    return net.eval()
