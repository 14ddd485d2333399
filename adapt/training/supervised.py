"""One Lightning loop for every method that trains: ``net(inputs) -> logits`` with cross-entropy.

``inputs`` are cached features (CoOp, Tip-Adapter-F) or pixels (LoRA). Each epoch ends with a
pass over the few-shot validation split; the weights of the best epoch (balanced accuracy, then
lower loss) are restored at the end, and training stops early after ``patience`` epochs without
improvement. The test split never enters here.
"""

from __future__ import annotations

import logging
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from adapt.methods.base import TrainConfig, TrainResult
from adapt.training.devices import (
    lightning_device,  # the loop's settings belong to the method contract (no Lightning there)
)
from adapt.training.optim import decay_groups, step_schedule, warmup_cosine

logger = logging.getLogger(__name__)


class ClassifierModule(L.LightningModule):
    def __init__(self, net: nn.Module, cfg: TrainConfig, steps_per_epoch: int) -> None:
        super().__init__()
        self.net, self.cfg, self.steps_per_epoch = net, cfg, steps_per_epoch
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def training_step(self, batch, _):
        inputs, labels = batch
        loss = F.cross_entropy(self.net(inputs), labels, label_smoothing=self.cfg.label_smoothing)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch, _):
        inputs, labels = batch
        self._val_logits.append(self.net(inputs).float())
        self._val_labels.append(labels)

    def on_validation_epoch_end(self) -> None:
        if not self._val_labels:
            return
        logits, labels = torch.cat(self._val_logits), torch.cat(self._val_labels)
        self._val_logits.clear()
        self._val_labels.clear()
        balanced, neg_loss = _score(logits, labels)
        self.log("val_loss", -neg_loss)
        self.log("val_accuracy", (logits.argmax(dim=1) == labels).float().mean())
        self.log("val_balanced_accuracy", balanced)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(decay_groups(self.net.named_parameters(), self.cfg.weight_decay), lr=self.cfg.lr)
        total = max(1, self.cfg.epochs * self.steps_per_epoch)
        schedule = warmup_cosine(opt, min(total - 1, self.cfg.warmup_epochs * self.steps_per_epoch), total)
        return {"optimizer": opt, "lr_scheduler": step_schedule(schedule)}


def _score(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(balanced accuracy, -cross-entropy): higher is better, compared as a tuple."""
    pred = logits.argmax(dim=1)
    recalls = [(pred[labels == c] == c).float().mean() for c in labels.unique()]
    return float(torch.stack(recalls).mean()), -float(F.cross_entropy(logits, labels))


def _trainable_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}


class BestOnValidation(L.Callback):
    """Keeps the trainable weights of the best validation epoch in memory; stops after ``patience``.

    The starting point counts as epoch -1, so training that only makes things worse on
    validation leaves the network as it started (e.g. a linear-probe head before fine-tuning).
    Not Lightning's ``EarlyStopping`` + ``ModelCheckpoint``: they rank by one metric (here it is
    balanced accuracy, then loss), never count the starting point, and checkpoint to disk (a
    LoRA backbone per improvement) where the few trainable tensors are kept in memory here.
    """

    def __init__(self, patience: int, initial_score: tuple[float, float] | None = None, initial_state=None) -> None:
        self.patience = patience
        self.best_score: tuple[float, float] | None = initial_score
        self.best_state: dict[str, torch.Tensor] | None = initial_state
        self.best_epoch = -1
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, module: ClassifierModule) -> None:
        if trainer.sanity_checking:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.history.append({"epoch": trainer.current_epoch, **m})
        score = (m.get("val_balanced_accuracy", 0.0), -m.get("val_loss", 0.0))
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self.best_state = _trainable_state(module.net)
        elif trainer.current_epoch - self.best_epoch >= self.patience:
            trainer.should_stop = True


def train_classifier(
    net: nn.Module,
    train_data: Dataset | tuple[torch.Tensor, torch.Tensor],
    val_data: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    *,
    device: str = "cpu",
    loggers: list | None = None,
    progress: bool = True,
    seed: int = 0,
) -> TrainResult:
    """Train ``net`` in place and leave it holding its best-validation-epoch weights."""
    L.seed_everything(seed, workers=True, verbose=False)
    train_ds = TensorDataset(*train_data) if isinstance(train_data, tuple) else train_data
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=False)
    has_val = len(val_data[1]) > 0
    val_loader = DataLoader(TensorDataset(*val_data), batch_size=256) if has_val else None
    module = ClassifierModule(net, cfg, steps_per_epoch=len(train_loader))
    initial_score = initial_state = None
    if has_val:
        was_training = net.training
        net.eval()
        with torch.no_grad():
            logits = torch.cat([net(x).float() for x, _ in val_loader])
        net.train(was_training)
        initial_score = _score(logits, val_data[1])
        initial_state = _trainable_state(net)
    best = BestOnValidation(cfg.patience, initial_score, initial_state)
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        **lightning_device(device),
        logger=loggers or False,
        callbacks=[best],
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        gradient_clip_val=cfg.grad_clip or None,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(module, train_loader, val_loader)
    if best.best_state is not None:
        with torch.no_grad():
            params = dict(net.named_parameters())
            for name, value in best.best_state.items():
                params[name].copy_(value)
    else:
        logger.warning("no validation split: keeping the weights of the last epoch")
    return TrainResult(
        best_epoch=best.best_epoch,
        best_val_balanced_accuracy=best.best_score[0] if best.best_score else float("nan"),
        epochs_run=trainer.current_epoch,
        history=best.history,
    )



def loop(*, device: str = "cpu", loggers: list | None = None, progress: bool = True, seed: int = 0):
    """``train_classifier`` bound to a device, loggers and seed: the ``AdaptContext.train`` a pipeline hands the methods."""
    return partial(train_classifier, device=device, loggers=loggers, progress=progress, seed=seed)
