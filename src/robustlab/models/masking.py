"""Planted gradient-masking wrappers: models that look robust to gradient attacks but are not.

Used to check that the masking checks (EVALUATION.md, checks 2 and 5) and cheap protocols such as
``fast`` still see through them (``benchmarks/fast_eval.py``, ``tests/test_fast_eval.py``).
"""

from __future__ import annotations

import torch
from torch import nn


class ScaledLogits(nn.Module):
    """``scale * base(x)``: the softmax saturates, so cross-entropy gradients underflow to zero (a
    margin or DLR loss still works, since it is scale-free in sign)."""

    def __init__(self, base: nn.Module, scale: float = 1000.0) -> None:
        super().__init__()
        self.base, self.scale = base, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.scale


class InputStep(nn.Module):
    """``base(round(levels * x) / levels)``: a non-differentiable input quantisation (zero gradient
    almost everywhere), so only a black-box attack can break it."""

    def __init__(self, base: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.base, self.levels = base, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(torch.round(x * self.levels) / self.levels)
