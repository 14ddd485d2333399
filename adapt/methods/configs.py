"""The methods' hyper-parameters: typed dataclasses with one line of help per field, no torch.

They are the one source of ``--hp`` names, defaults, parsing and ``adapt retrain --help``, and the
CLI validates ``--hp`` with them before any heavy import. Which method uses which config is
``adapt.methods.registry``; the methods themselves live in ``adapt.methods`` (torch, open_clip, peft).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adapt.errors import AdaptError


def hp(default: Any = dataclasses.MISSING, help: str = "", factory: Any = dataclasses.MISSING):
    """A hyper-parameter: its default (or default factory) and its one-line help (peft's style)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ZeroShotConfig:
    """Zero-shot has no hyper-parameters besides the prompts (class descriptions come from the data or the CLI)."""


LINEAR_SELECT = ("cv", "val")


@dataclass
class LinearConfig:
    c_grid: list[float] = hp(factory=lambda: np.logspace(-2, 4, 13).tolist(), help="candidate inverse regularisation strengths C")
    max_iter: int = hp(2000, "L-BFGS iterations per fit")
    select: str = hp("cv", "how C is chosen: 'cv' = repeated stratified k-fold over all labelled images (train + val), then refit "
                     "on all of them; 'val' = fit on the training images, choose on the validation images")
    cv_folds: int = hp(4, "select=cv: k of the k-fold")
    cv_repeats: int = hp(2, "select=cv: repeats of the k-fold")
    train_views: int = hp(8, "each labelled image enters the fit as this many of its dihedral views (1 = itself; 2 = + mirror; 8 = + quarter turns)")
    tta_views: int = hp(4, "test-time augmentation inside the exported model: mean feature of this many dihedral views "
                        "(costs as many inferences; 1 = the image alone, fastest; 4 = the image, its mirror, and a quarter turn of each; 8 = all)")
    pooling: str = hp("avg+max", "how each stage map becomes a vector: 'avg', or 'avg+max' (its maximum too: small marks on busy surfaces)")

    def __post_init__(self) -> None:
        if not self.c_grid or min(self.c_grid) <= 0:
            raise ValueError("c_grid needs positive values")
        if self.select not in LINEAR_SELECT:
            raise ValueError(f"select must be one of {', '.join(LINEAR_SELECT)}, got {self.select!r}")
        if self.cv_folds < 2 or self.cv_repeats < 1:
            raise ValueError("cv_folds must be >= 2 and cv_repeats >= 1")
        if not 1 <= self.train_views <= 8 or not 1 <= self.tta_views <= 8:
            raise ValueError("train_views and tta_views must be 1-8 (dihedral views: quarter turns x mirror)")
        if self.pooling not in ("avg", "avg+max"):
            raise ValueError(f"pooling must be 'avg' or 'avg+max', got {self.pooling!r}")


@dataclass
class CoOpConfig:
    n_ctx: int = hp(4, "number of learned context tokens")
    init: str = hp("a photo of a", "words whose embeddings initialise the context ('' = random)")
    epochs: int = hp(100, "maximum epochs")
    lr: float = hp(2e-3, "peak learning rate")
    batch_size: int = hp(32, "images per step")
    patience: int = hp(20, "epochs without a better validation score before stopping")

    def __post_init__(self) -> None:
        if self.n_ctx < 1:
            raise ValueError("n_ctx must be >= 1")


LORA_TOWER_PREFIXES = {"vision": (r"visual\.transformer",), "text": (r"transformer", r"text\.transformer")}
LORA_VIT_MODULES = {"attn": "attn", "c_fc": r"mlp\.c_fc", "c_proj": r"mlp\.c_proj"}
LORA_CNN_MODULES = {"conv_pw": "conv_pw", "conv_pwl": "conv_pwl"}
LORA_HEADS = ("linear-probe", "text")


@dataclass
class LoraConfig:
    head: str = hp("linear-probe", "linear-probe (LP-FT: the linear probe, then fine-tuned with the adapters) or text (CLIP-LoRA: cosine to class prompts)")
    towers: list[str] = hp(factory=lambda: ["vision", "text"], help="encoders that get adapters (text only with head=text)")
    modules: list[str] = hp(factory=lambda: ["auto"], help="block parts: attn,c_fc,c_proj (ViT) or conv_pw,conv_pwl (CNN); auto = all of the tower's")
    cnn_from_block: int = hp(3, "CNN towers: adapt the blocks from this stage on (timm's blocks index)")
    rank: int = hp(4, "LoRA rank r")
    alpha: float = hp(8.0, "LoRA scaling numerator (scale = alpha / r)")
    dropout: float = hp(0.1, "dropout on the LoRA branch input")
    epochs: int = hp(60, "maximum epochs")
    lr: float = hp(1e-3, "peak learning rate")
    batch_size: int = hp(16, "images per step")
    patience: int = hp(8, "epochs without a better validation score before stopping")
    augment: bool = hp(True, "random resized crop + flips on the training images")
    inspection_augment: bool = hp(False, "also quarter turns, brightness/contrast and a light blur (surfaces without a preferred orientation)")
    select: str = hp("val", "head=linear-probe: 'val' (fine-tune on the training images, keep the best validation epoch, the start included) "
                     "or 'all' (start from the linear probe refit on train + val, fine-tune on all of them for --hp epochs, keep the last)")
    pooling: str = hp("avg", "head=linear-probe on a CNN: 'avg' or 'avg+max' pooled stage maps, as the linear probe's --hp pooling")
    probe_views: int = hp(1, "head=linear-probe: dihedral views of each training image in the starting probe's fit (as linear's train_views)")
    tta_views: int = hp(1, "test-time augmentation inside the exported model: mean feature of this many dihedral views (1-8)")

    def __post_init__(self) -> None:
        if self.head not in LORA_HEADS:
            raise ValueError(f"head must be one of {', '.join(LORA_HEADS)}, got {self.head!r}")
        if not set(self.towers) <= set(LORA_TOWER_PREFIXES) or not self.towers:
            raise ValueError(f"towers must be a non-empty subset of {sorted(LORA_TOWER_PREFIXES)}")
        known = {"auto", *LORA_VIT_MODULES, *LORA_CNN_MODULES}
        if not set(self.modules) <= known or not self.modules:
            raise ValueError(f"modules must be a non-empty subset of {sorted(known)}")
        if self.rank < 1:
            raise ValueError("rank must be >= 1")
        if self.pooling not in ("avg", "avg+max"):
            raise ValueError(f"pooling must be 'avg' or 'avg+max', got {self.pooling!r}")
        if self.select not in ("val", "all"):
            raise ValueError(f"select must be 'val' or 'all', got {self.select!r}")
        if self.select == "all" and self.head != "linear-probe":
            raise ValueError("select=all fine-tunes from the linear probe: head=linear-probe")
        if not 1 <= self.probe_views <= 8 or not 1 <= self.tta_views <= 8:
            raise ValueError("probe_views and tta_views must be 1-8 (dihedral views: quarter turns x mirror)")

    def adapted_towers(self) -> list[str]:
        """The text tower takes no part in a linear-probe head, so it gets no adapters then."""
        return [t for t in self.towers if t == "vision" or self.head == "text"]

    def target_regex(self, cnn_vision: bool = False) -> str:
        """Module names for peft; ``cnn_vision`` when the image tower is a timm CNN."""
        towers = self.adapted_towers()
        patterns = []
        vit_towers = [t for t in towers if not (t == "vision" and cnn_vision)]
        auto = "auto" in self.modules
        if vit_towers:
            mods = [m for m in (LORA_VIT_MODULES if auto else self.modules) if m in LORA_VIT_MODULES]
            if mods:
                prefixes = "|".join(p for t in vit_towers for p in LORA_TOWER_PREFIXES[t])
                patterns.append(rf"({prefixes})\.resblocks\.\d+\.({'|'.join(LORA_VIT_MODULES[m] for m in mods)})")
        if "vision" in towers and cnn_vision:
            mods = [m for m in (LORA_CNN_MODULES if auto else self.modules) if m in LORA_CNN_MODULES]
            if mods:
                blocks = "|".join(str(b) for b in range(self.cnn_from_block, 16))
                patterns.append(rf"visual\.trunk\.blocks\.({blocks})\.\d+\.({'|'.join(mods)})")
        if not patterns:
            raise AdaptError(f"LoRA modules {self.modules} do not exist in the adapted tower(s) {towers}")
        return "^(" + "|".join(patterns) + ")$"


@dataclass
class TipAdapterConfig:
    alpha_grid: list[float] = hp(factory=lambda: [0.0, *np.logspace(-1.5, 2, 15).tolist()], help="cache weight candidates")
    beta_grid: list[float] = hp(factory=lambda: [0.5, 1.0, 2.0, 3.5, 5.5, 7.5, 10.0, 15.0, 25.0, 50.0],
                                help="cache sharpness candidates (large ones for tightly clustered CNN features)")
    text_weight_grid: list[float] = hp(factory=lambda: [1.0, 0.0], help="zero-shot term weight candidates (0 = the cache alone)")
    finetune: bool = hp(False, "Tip-Adapter-F: train the cache keys")
    epochs: int = hp(20, "Tip-Adapter-F epochs")
    lr: float = hp(1e-3, "Tip-Adapter-F learning rate")

    def __post_init__(self) -> None:
        if not self.alpha_grid or not self.beta_grid or not self.text_weight_grid:
            raise ValueError("alpha_grid, beta_grid and text_weight_grid must not be empty")


@dataclass
class PatchCoreConfig:
    stages: list[int] = hp(factory=list, help="levels whose maps make the patch features (first = the heatmap grid): CNN trunk stages "
                           "or ViT block indices; empty = stage 2 (stride 8) of a CNN, the middle block of a ViT")
    pool: int = hp(3, "local neighbourhood (odd, pixels of each stage map) averaged into a patch feature")
    coreset_fraction: float = hp(0.1, "share of the good patches kept in the memory bank (greedy coreset)")
    max_bank: int = hp(8192, "most patches kept in the memory bank (bounds ONNX size and latency)")
    augment: str = hp("dihedral", "good images also enter the bank as their flips and quarter turns ('dihedral', 8x patches) or not ('none')")
    top_fraction: float = hp(0.01, "image score = mean of the worst patches, this share of the patch grid (0 = the single worst patch, as in the PatchCore paper)")
    good_quantile: float = hp(0.95, "threshold = this quantile of good validation scores when validation holds no defects")
    seed: int = hp(0, "seed of the coreset's random projection and start")
    combine: str = hp("auto", "image score: 'local' (patch score alone), 'image' (a Gaussian of image statistics alone), or both, standardised on good "
                      "validation images, by 'max' or 'sum'; 'auto': local, image or max, whichever has the best validation ROC-AUC (max without defective validation images)")
    image_score: str = hp("gaussian", "image score: Mahalanobis distance of the image statistics to the good images' mean ('gaussian') or nearest good image ('knn')")
    image_stats: str = hp("mean_std", "per-image statistics of the patch features for the Gaussian: 'mean' or 'mean_std' (mean and std over the grid)")
    image_stages: list[int] = hp(factory=list, help="further levels whose maps feed only the image statistics (not the bank); "
                                 "empty = stage 3 (stride 16) of a CNN, none on a ViT; the bank's stages = none")
    threshold_rule: str = hp("auto", "'auto': best balanced accuracy on validation when it holds defects, else good_quantile; 'good_quantile': good images only")

    def __post_init__(self) -> None:
        try:
            self.stages = [int(s) for s in self.stages]
        except ValueError:
            raise ValueError(f"stages must be integers, got {self.stages}") from None
        if self.pool < 1 or self.pool % 2 == 0:
            raise ValueError(f"pool must be an odd number >= 1, got {self.pool}")
        if not 0 < self.coreset_fraction <= 1:
            raise ValueError("coreset_fraction must be in (0, 1]")
        if self.max_bank < 1:
            raise ValueError("max_bank must be >= 1")
        if not 0 <= self.top_fraction <= 1:
            raise ValueError("top_fraction must be in [0, 1]")
        if not 0 < self.good_quantile <= 1:
            raise ValueError("good_quantile must be in (0, 1]")
        if self.augment not in ("none", "dihedral"):
            raise ValueError(f"augment must be 'none' or 'dihedral', got {self.augment!r}")
        try:
            self.image_stages = [int(s) for s in self.image_stages]
        except ValueError:
            raise ValueError(f"image_stages must be integers, got {self.image_stages}") from None
        from adapt.core.anomaly_choices import COMBINE_CHOICES, IMAGE_SCORES, IMAGE_STATS

        if self.combine not in COMBINE_CHOICES:
            raise ValueError(f"combine must be one of {', '.join(COMBINE_CHOICES)}, got {self.combine!r}")
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {', '.join(IMAGE_SCORES)}, got {self.image_score!r}")
        if self.image_stats not in IMAGE_STATS:
            raise ValueError(f"image_stats must be one of {', '.join(IMAGE_STATS)}, got {self.image_stats!r}")
        if self.threshold_rule not in ("auto", "good_quantile"):
            raise ValueError(f"threshold_rule must be 'auto' or 'good_quantile', got {self.threshold_rule!r}")


def build_config(config_cls: type, overrides: dict[str, str] | None = None, method: str = ""):
    """A config of ``config_cls`` from ``KEY=VALUE`` strings, parsed by the default's type."""
    defaults = config_cls()
    kwargs = {}
    for key, text in (overrides or {}).items():
        if not hasattr(defaults, key):
            known = ", ".join(f.name for f in dataclasses.fields(config_cls)) or "none"
            raise ValueError(f"unknown hyper-parameter '{key}' for {method or config_cls.__name__} (known: {known})")
        kwargs[key] = _parse_like(getattr(defaults, key), text)
    return config_cls(**kwargs)


def _parse_like(default: Any, text: str) -> Any:
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got '{text}'")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, list):
        if text.startswith("["):
            return json.loads(text)
        items = [t for t in text.split(",") if t]
        kind = type(default[0]) if default else str
        return [kind(t) for t in items]
    return text
