"""LoRA (Hu et al. 2021; CLIP-LoRA, Zanella & Ben Ayed 2024) on the vision and/or text tower.

peft injects low-rank adapters into the transformer blocks' attention (``attn``, the
``nn.MultiheadAttention``) and MLP (``mlp.c_fc``, ``mlp.c_proj``) of ViT towers, or into the
1x1 convolutions of a CNN tower's inverted-residual blocks (``conv_pw`` expands, ``conv_pwl``
projects) from stage ``cnn_from_block`` on; only the adapters train. The CNN's batch-norm
statistics stay frozen (16 images per class cannot re-estimate them).
Two heads:
- ``text`` (CLIP-LoRA): logits are the cosine similarity between image features and the
  prompt-ensemble class embeddings, recomputed each step when the text tower is adapted;
- ``linear-probe`` (LP-FT, Kumar et al. 2022; the default): the linear probe on the frozen
  features (``adapt.methods.linear``) is the starting head, then head and vision adapters are
  trained together. It does not lean on the text tower, and since the starting point counts
  as a candidate on validation, fine-tuning can only replace it by something better there.
Images are augmented (random resized crop, flips). The best validation epoch is kept, the
adapters are merged into the weights, and the classifier is exported like any other.
``--hp select=all`` instead starts from the linear probe refit on all labelled images (C by
cross-validation) and fine-tunes on all of them for ``epochs``, keeping the last (no image held
out to stop on; ``--method auto``'s cross-validation is then the only judge). ``pooling``,
``probe_views`` and ``tta_views`` are the linear probe's recipe (``adapt.methods.linear``). On dev
folders none of this beat the linear probe on both local and texture-wide defects, so the
defaults stay (experiments/fewshot/lora_recipe/results.md).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from adapt.core.classifier import CosineHead, ImageClassifier, PixelNormalizer
from adapt.core.encoders import ImageEncoder, freeze_norm_stats
from adapt.core.features import labels_tensor, load_pixels
from adapt.errors import AdaptError
from adapt.methods.base import AdaptContext, FitResult, Method, TrainConfig
from adapt.methods.configs import LoraConfig
from adapt.methods.frozen import logit_scale
from adapt.methods.prompts import DEFAULT_TEMPLATES, class_text

logger = logging.getLogger(__name__)



class QuarterTurn(torch.nn.Module):
    """Rotate a square ``[C, H, W]`` image by a random multiple of 90 degrees."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return torch.rot90(img, int(torch.randint(4, ())), dims=(-2, -1))


class AugmentedPixels(Dataset):
    """Few-shot training images as uint8 ``[H, W, 3]`` tensors, randomly cropped and flipped; with
    ``inspection`` also turned by quarter turns, with brightness/contrast changes and a light blur
    (no colour changes: inspection images are often grayscale)."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, augment: bool, inspection: bool = False) -> None:
        from torchvision.transforms import v2

        size = pixels.shape[1]
        self.pixels, self.labels = pixels.permute(0, 3, 1, 2).contiguous(), labels
        steps = [
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
        ]
        if inspection:
            steps += [QuarterTurn(), v2.ColorJitter(brightness=0.2, contrast=0.2), v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.3)]
        self.transform = v2.Compose(steps) if augment else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.pixels[i]
        if self.transform is not None:
            img = self.transform(img)
        return img.permute(1, 2, 0), self.labels[i]


class _FrozenNormStats(nn.Module):
    """A module whose batch-norm layers stay in eval mode while the rest trains."""

    def train(self, mode: bool = True):
        return freeze_norm_stats(super().train(mode))


class LoraNet(_FrozenNormStats):
    """pixels -> cosine logits through a LoRA-adapted CLIP (``model`` already holds the adapters)."""

    def __init__(self, model, encoder: ImageEncoder, tokenizer, classes, descriptions, mean, std, scale: float, adapt_text: bool) -> None:
        super().__init__()
        self.model, self.encoder, self.adapt_text, self.scale = model, encoder, adapt_text, scale
        self.normalize = PixelNormalizer(mean, std)
        prompts = [[t.format(class_text(c, descriptions)) for t in DEFAULT_TEMPLATES] for c in classes]
        self.register_buffer("tokens", torch.stack([tokenizer(p) for p in prompts]), persistent=False)
        with torch.no_grad():
            self.register_buffer("fixed_text", self.class_embeddings(), persistent=False)

    def class_embeddings(self) -> torch.Tensor:
        c, t, length = self.tokens.shape
        emb = F.normalize(self.model.encode_text(self.tokens.view(c * t, length)).float(), dim=-1)
        return F.normalize(emb.view(c, t, -1).mean(dim=1), dim=-1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = F.normalize(self.encoder(self.normalize(pixels)).float(), dim=-1)
        text = self.class_embeddings() if self.adapt_text else self.fixed_text
        return self.scale * feats @ text.T


class LoraProbeNet(_FrozenNormStats):
    """pixels -> linear head over L2-normalised features of a LoRA-adapted image tower."""

    def __init__(self, encoder: ImageEncoder, head: nn.Module, mean, std) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.normalize = PixelNormalizer(mean, std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(F.normalize(self.encoder(self.normalize(pixels)).float(), dim=-1))


def fit_lora(ctx: AdaptContext, cfg: LoraConfig | None = None) -> FitResult:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    cfg = cfg or LoraConfig()
    if not cfg.adapted_towers():
        raise AdaptError("LoRA with head=linear-probe adapts the vision tower: include 'vision' in towers")
    b = ctx.backbone
    probe = None
    if cfg.head == "linear-probe":
        from adapt.methods.configs import LinearConfig
        from adapt.methods.linear import fit_linear

        # the starting head on the frozen features LoRA's network computes. select=val: fitted on the
        # training images only, since fine-tuning has to beat this start on the unseen validation
        # images; select=all: nothing is held out, so C by cross-validation over all, then refit
        select = "val" if cfg.select == "val" else "cv"
        probe = fit_linear(ctx, LinearConfig(select=select, train_views=cfg.probe_views, tta_views=1, pooling=cfg.pooling)).classifier.head
    model = copy.deepcopy(b.model).float()
    cnn = bool(b.feature_stages)
    peft_cfg = PeftLoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_regex(cnn), bias="none"
    )
    try:
        peft_model = get_peft_model(model, peft_cfg)
    except ValueError as exc:
        raise AdaptError(f"LoRA found no {cfg.modules} modules in the {cfg.towers} tower(s) of {b.arch}: {exc}") from exc
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    inner = peft_model.base_model.model
    spec = ctx.spec("probe", pooling=cfg.pooling) if probe is not None else b.encoder_spec("text")
    if probe is not None:
        net = LoraProbeNet(ImageEncoder(inner.visual, spec), probe, b.mean, b.std)
        trainable += sum(p.numel() for p in probe.parameters())
    else:
        net = LoraNet(
            inner, ImageEncoder(inner.visual, spec), b.tokenizer, ctx.classes, ctx.descriptions, b.mean, b.std,
            logit_scale(ctx), "text" in cfg.adapted_towers(),
        )
    logger.info("LoRA: %d trainable parameters (rank %d, towers %s, %s head)", trainable, cfg.rank, ",".join(cfg.adapted_towers()), cfg.head)
    train_px = load_pixels(ctx.split.train, b.image_size, b.resize_mode, ctx.progress)
    val_px = load_pixels(ctx.split.val, b.image_size, b.resize_mode, ctx.progress)
    y_train, y_val = labels_tensor(ctx.split.train), labels_tensor(ctx.split.val)
    if cfg.select == "all":  # every labelled image trains, for a fixed number of epochs (the last is kept)
        train_px, y_train = torch.cat([train_px, val_px]), torch.cat([y_train, y_val])
        val_px, y_val = val_px[:0], y_val[:0]
    result = ctx.train_net(
        net,
        AugmentedPixels(train_px, y_train, cfg.augment, cfg.inspection_augment),
        (val_px, y_val),
        TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, patience=cfg.patience),
    )
    net.eval()
    with torch.no_grad():
        head = probe if probe is not None else CosineHead(net.class_embeddings(), net.scale)
    merged = peft_model.merge_and_unload()
    params = {**cfg.__dict__, "trainable_parameters": trainable, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
    notes = []
    if result.best_epoch < 0 and len(y_val):
        start = "linear probe" if probe is not None else "zero-shot prompts"
        notes.append(f"lora: none of {result.epochs_run} fine-tuned epochs beat its starting point on validation, so this model "
                     f"is the {start} on the unadapted tower (try --method linear, or more images)")
    clf = ImageClassifier(ImageEncoder(merged.visual, replace(spec, views=cfg.tta_views)), head, ctx.info(Method.LORA, params)).eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # what the exported model says of the validation images (its test-time views included)
        val_probs = clf(val_px).numpy() if len(y_val) else None
    return FitResult(clf, params=params, val_probabilities=val_probs, history=result.history, notes=notes)
