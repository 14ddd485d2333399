"""Lightning module for in-domain self-supervised adaptation of a CNN image tower (lightly losses).

Two augmented views of each unlabeled image go through the features the frozen-feature methods
read (``adapt.core.encoders.ImageEncoder``, the ``probe`` spec: pooled trunk stages), then a lightly
projection head; the loss is lightly's (``NTXentLoss`` for SimCLR, ``VICRegLoss``). Only the
trunk blocks from ``trainable_from`` on are trained, at a low learning rate; batch-norm layers
keep their ImageNet statistics (small CPU batches would make them noisy). The projection head
is not part of the saved backbone.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from adapt.core.encoders import EncoderSpec, ImageEncoder, freeze_norm_stats
from adapt.training.optim import decay_groups, step_schedule, warmup_cosine

LOSSES = ("simclr", "vicreg")


def _loss(name: str, temperature: float, distributed: bool) -> nn.Module:
    from lightly.loss import NTXentLoss, VICRegLoss

    if name == "simclr":
        return NTXentLoss(temperature=temperature, gather_distributed=distributed)
    if name == "vicreg":
        return VICRegLoss(gather_distributed=distributed)
    raise ValueError(f"ssl loss must be one of {LOSSES}, got {name!r}")


def trainable_parameters(visual: nn.Module, trainable_from: int) -> list[nn.Parameter]:
    """Unlock the trunk blocks ``trainable_from`` .. last (timm EfficientNet ``blocks``); everything
    else of the tower (stem, lower blocks, final conv and projection) stays as it is."""
    trunk = visual.trunk
    for p in visual.parameters():
        p.requires_grad_(False)
    blocks = list(trunk.blocks)
    if not 0 <= trainable_from <= len(blocks):
        raise ValueError(f"trainable_from must be in 0..{len(blocks)}, got {trainable_from}")
    params = []
    for block in blocks[trainable_from:]:
        params += list(block.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


class SelfSupervisedAdaptation(L.LightningModule):
    def __init__(
        self,
        visual: nn.Module,
        spec: EncoderSpec,
        *,
        loss: str = "simclr",
        temperature: float = 0.2,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        warmup_steps: int = 10,
        total_steps: int = 100,
        trainable_from: int = 4,
        head_dim: int = 128,
        distributed: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = ImageEncoder(visual, spec)
        self.tower_params = trainable_parameters(visual, trainable_from)
        with torch.no_grad():
            dim = int(self.encoder(torch.zeros(2, 3, 64, 64)).shape[1])
        from lightly.models.modules import SimCLRProjectionHead

        self.head = SimCLRProjectionHead(input_dim=dim, hidden_dim=512, output_dim=head_dim)
        self.loss_fn = _loss(loss, temperature, distributed)
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = max(1, warmup_steps), max(total_steps, 1)

    def train(self, mode: bool = True):
        super().train(mode)
        freeze_norm_stats(self.encoder)  # keep the ImageNet batch-norm statistics
        return self

    def training_step(self, batch, _):
        view1, view2 = batch
        z = self.head(self.encoder(torch.cat([view1, view2])))
        z1, z2 = z.chunk(2)
        loss = self.loss_fn(z1, z2)
        self.log("ssl_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(view1))
        return loss

    def configure_optimizers(self):
        groups = decay_groups(self.encoder.named_parameters(), self.weight_decay, lr=self.lr)
        groups += decay_groups(self.head.named_parameters(), self.weight_decay, lr=self.lr * 10)
        opt = torch.optim.AdamW(groups)
        return {"optimizer": opt, "lr_scheduler": step_schedule(warmup_cosine(opt, self.warmup_steps, self.total_steps))}
