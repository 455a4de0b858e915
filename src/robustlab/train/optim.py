"""Optimisers and per-step learning-rate schedules.

The learning rate is a pure function of the global step (``lr_at``), set on the optimiser before
every step, so there is no scheduler state to checkpoint and a resumed run follows the same curve.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustlab.config import OptimConfig, ScheduleConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over the parameters that require grad.

    Weight decay applies to every parameter, BN included, as in the papers' recipes.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total_steps``.

    Linear warm-up over ``warmup_epochs``, then ``piecewise`` (× gamma at each milestone, given as a
    fraction of training, at the epoch boundaries of :func:`decay_epochs`), ``cosine`` (to 0 at the
    end), ``constant`` or ``cyclic``.

    ``cyclic``: one triangle over training, t = (step + 1)/total: 2t up to the middle, 2(1 − t) after,
    the peak mid-training as the current FGSM-RS code (locuslab/fast_adversarial CIFAR10/train_fgsm.py,
    CyclicLR with equal halves) and N-FGSM's code have it.
    """
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "cyclic":
        t = (step + 1) / max(total_steps, 1)
        return 2 * t if t <= 0.5 else 2 * (1.0 - t)
    if cfg.name == "cosine":
        span = max(total_steps - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / span))
    passed = sum(1 for e in decay_epochs(total_steps // max(steps_per_epoch, 1), cfg) if step // steps_per_epoch >= e)
    if cfg.factors is not None:
        return cfg.factors[passed - 1] if passed else 1.0
    return cfg.gamma ** passed


def decay_epochs(epochs: int, cfg: ScheduleConfig) -> list[int]:
    """The 0-based epochs at whose first step each piecewise milestone takes effect: ceil(m·epochs).

    The official codes (FSR, ANCRA, ...) set the rate once per epoch, ``lr × 0.1 if epoch >= 75``
    with epochs counted from 0, so milestone 75/120 decays at the start of epoch 75: 75 epochs at
    the base rate, not 74. A fraction that falls inside an epoch takes effect at the next epoch
    boundary (never mid-epoch).
    """
    return [math.ceil(m * epochs - 1e-6) for m in cfg.milestones]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
