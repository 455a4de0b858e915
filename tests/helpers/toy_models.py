"""Tiny models with known answers for attack tests."""

from __future__ import annotations

from typing import Iterable

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


def digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's digits as (1797, 1, 8, 8) images in [0, 1] and their labels (no download)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1), torch.tensor(data.target)


def train_digits_mlp(
    x: torch.Tensor, y: torch.Tensor, batches: Iterable[torch.Tensor], generator: torch.Generator, fgsm_eps: float = 0.0
) -> nn.Module:
    """A 64-64-10 MLP (N(0, 0.1²) initialisation from ``generator``), Adam at 1e-2 over the index ``batches``;
    with ``fgsm_eps > 0``, FGSM training from a uniform start (step 1.25·eps). Returned frozen, in eval mode."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for idx in batches:
        xb, yb = x[idx], y[idx]
        if fgsm_eps > 0:
            start = ((xb + (torch.rand(xb.shape, generator=generator) * 2 - 1) * fgsm_eps).clamp(0, 1)
                     .requires_grad_(True))
            (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(start), yb), start)
            step = (start.detach() - xb + 1.25 * fgsm_eps * grad.sign()).clamp(-fgsm_eps, fgsm_eps)
            xb = (xb + step).clamp(0, 1)
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)
