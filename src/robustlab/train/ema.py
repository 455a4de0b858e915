"""Exponential moving average of a model's weights and buffers (Polyak averaging).

Follows the idea of timm's ``ModelEmaV3``: a copy kept in eval mode, updated under ``no_grad`` with
one fused lerp over all floating entries, integer buffers copied. Improvements: entries are paired
by name, checked once at construction; the decay warm-up ``min(decay, (t+1)/(t+10))`` (as in AFD's
released code) is a function of the step passed in, so a resumed run reproduces it exactly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """The decay used at optimisation step ``step`` (0-based)."""
    return min(decay, (step + 1) / (step + 10)) if warmup else decay


class ModelEma:
    """An averaged copy of ``model``; :meth:`update` after each optimiser step."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        live = [k for k, _ in _entries(model)]
        mine = [k for k, _ in _entries(self.module)]
        if live != mine:
            raise RuntimeError("EMA copy and model have different state entries")

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend the live weights in: ``ema ← ema + (1 − decay)·(live − ema)``; integer buffers copied."""
        decay = ema_decay_at(step, self.decay, self.warmup)
        ema_float, live_float = [], []
        for (_, e), (_, v) in zip(_entries(self.module), _entries(model)):
            if e.is_floating_point():
                ema_float.append(e)
                live_float.append(v.detach())
            else:
                e.copy_(v)
        if ema_float:
            torch._foreach_lerp_(ema_float, live_float, 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


def _entries(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Named parameters and buffers in a fixed order."""
    return list(model.state_dict(keep_vars=True).items())
