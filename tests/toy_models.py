"""Tiny models with known answers for attack tests."""

from __future__ import annotations

import torch
from torch import nn


class LinearClassifier(nn.Module):
    """``logits = W · flatten(x) + b``: the optimal L∞ attack on a two-class model is analytic.

    For true class y and other class o, the margin ``z_o - z_y`` grows fastest along
    ``sign(w_o - w_y)``, so inside the ε-ball (away from the [0,1] box) the optimum is
    ``x + eps * sign(w_o - w_y)``, and the optimal L2 perturbation is ``eps * (w_o - w_y)/‖w_o - w_y‖``.
    """

    def __init__(self, in_shape: tuple[int, ...] = (1, 4, 4), num_classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d = int(torch.tensor(in_shape).prod())
        self.weight = nn.Parameter(torch.randn(num_classes, d, generator=g))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.t() + self.bias


def interior_inputs(n: int, in_shape: tuple[int, ...] = (1, 4, 4), seed: int = 0) -> torch.Tensor:
    """Inputs in [0.3, 0.7], so an ε ≤ 0.3 ball never touches the [0, 1] box."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand((n, *in_shape), generator=g)
