"""The optimiser pieces every trainer here shares: which parameters get weight decay, and the
learning-rate schedule (linear warmup, then cosine decay to zero), both written once."""

from __future__ import annotations

from collections.abc import Iterable

import torch

NO_DECAY_NAMES = ("bn", "ln", "bias", "logit_")  # batch/layer norms, biases, the temperature and SigLIP bias


def decays(name: str, param: torch.nn.Parameter) -> bool:
    """Whether ``param`` gets weight decay: matrices and kernels do; gains, biases, norms and
    scalars (``ndim < 2``) and the names in ``NO_DECAY_NAMES`` do not."""
    return param.ndim >= 2 and not any(k in name for k in NO_DECAY_NAMES)


def decay_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float, **group) -> list[dict]:
    """AdamW parameter groups of the trainable parameters: with ``weight_decay`` (first), then
    without; ``group`` (e.g. ``lr``) is set on both, and empty groups are left out."""
    decay, no_decay = [], []
    for name, p in named_parameters:
        if p.requires_grad:
            (decay if decays(name, p) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, **group}, {"params": no_decay, "weight_decay": 0.0, **group}]
    return [g for g in groups if g["params"]]


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup from ``1/warmup`` of the learning rate to all of it over ``warmup_steps``, then
    cosine decay to zero at ``total_steps`` (torch's ``SequentialLR`` of ``LinearLR`` and
    ``CosineAnnealingLR``); step it once per optimiser step."""
    total = max(1, total_steps)
    warmup = max(1, min(warmup_steps, total - 1))
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    return SequentialLR(
        optimizer,
        [LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=warmup), CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))],
        milestones=[warmup],
    )


def step_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict:
    """The scheduler as Lightning's ``configure_optimizers`` wants it: stepped every optimiser step."""
    return {"scheduler": scheduler, "interval": "step"}
