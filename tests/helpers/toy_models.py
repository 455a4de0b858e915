"""Tiny models with known answers for attack tests."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from robustlab.attacks import pgd


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


def pgd_at_digits_cnn(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN adversarially trained on sklearn digits (PGD-AT at L∞ 0.1, 3-step PGD of step 0.05, 10 epochs
    of SGD on 1,400 images, a few seconds on one thread), frozen in eval mode, and a 128-image held-out probe
    ``(x, y)``. The split is fixed; ``seed`` draws the initialisation, the batch order and the PGD starts (seed 0 is
    the model of tests/evaluate/test_checks.py, another seed a sibling trained the same way)."""
    x, y = digits_images()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    train, probe = perm[:1400], perm[1400:1528]
    if seed:
        g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 16, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(10):
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), 100):
            xb, yb = x[order[i:i + 100]], y[order[i:i + 100]]
            model.eval()
            xa = pgd(model, xb, yb, eps=0.1, steps=3, step_size=0.05, early_stop=False, generator=g)
            model.train()
            loss = nn.functional.cross_entropy(model(xa), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval().requires_grad_(False), x[probe], y[probe]


class FarIsSafe(nn.Module):
    """Two classes around a flat grey image: a linear margin 0.05 - sum(x - 0.5) for class 0 (easy to
    break within L∞ 0.1), but class 0 with a constant, gradient-free margin once some pixel is more
    than 0.3 from grey, so large budgets look *more* robust. After ``flip_after`` forwards (if set) the
    model answers class 0 whatever the input: a stateful defense."""

    def __init__(self, flip_after: int | None = None) -> None:
        super().__init__()
        self.flip_after = flip_after
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        d = (x - 0.5).flatten(1)
        near = 0.05 - d.sum(dim=1)
        far = 10.0 + 0.0 * near  # constant, but still part of the graph
        z0 = torch.where(d.abs().amax(dim=1) > 0.3, far, near)
        if self.flip_after is not None and self.calls > self.flip_after:
            z0 = far
        return torch.stack([z0, torch.zeros_like(z0)], dim=1)


class Quantised(nn.Module):
    """``base(round(4x) / 4)``: torch.round has a zero gradient, so gradient attacks are blind."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(torch.round(x * 4) / 4)
