"""Helpers shared by every attack: ε promotion, feasible-set bounds, projections, mode switching."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from robustlab.errors import UserError

NORMS = ("linf", "l2")


def check_norm(norm: str) -> str:
    """Normalise a norm name (``Linf``/``linf``/``L2``/``l2``) or raise UserError."""
    key = str(norm).lower()
    if key not in NORMS:
        raise UserError(f"unknown norm {norm!r}; use linf or l2")
    return key


def per_sample(value: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Promote a float or an (N,) tensor to shape (N, 1, 1, ...) broadcastable against ``x``."""
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise UserError(f"eps must be a float or a tensor of shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t.view(-1, *([1] * (x.ndim - 1)))


def linf_bounds(x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element lower/upper bounds of the intersection of the L∞ ε-ball with [0, 1]."""
    return (x - eps).clamp_min(0.0), (x + eps).clamp_max(1.0)


def flat_norm(v: torch.Tensor) -> torch.Tensor:
    """L2 norm per sample, shape (N, 1, 1, ...)."""
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))


def project_l2(x: torch.Tensor, x_adv: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Project ``x_adv`` onto the L2 ε-ball around ``x`` and then into [0, 1]."""
    delta = x_adv - x
    factor = (eps / flat_norm(delta).clamp_min(1e-12)).clamp_max(1.0)
    return (x + delta * factor).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, eps: torch.Tensor, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A uniform random point in the ε-ball (L∞: per coordinate; L2: uniform in the ball), clipped to [0,1]."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + (2 * u - 1) * eps).clamp(0.0, 1.0)
    g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    d = x[0].numel()
    r = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
    direction = g / flat_norm(g).clamp_min(1e-12)
    return (x + direction * r.view_as(eps) * eps).clamp(0.0, 1.0)


def surface_start(x: torch.Tensor, eps: torch.Tensor, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """The reference AutoAttack's APGD start (``autopgd_base.py``, ``attack_single_run``), clipped to [0,1]:
    L∞ ``x + eps * t / max|t|`` with ``t`` uniform in [-1, 1]^d (one coordinate on the ball's face);
    L2 ``x + eps * g / ||g||`` with ``g`` Gaussian (on the sphere)."""
    if norm == "linf":
        t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
        scale = t.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        return (x + eps * t / scale).clamp(0.0, 1.0)
    g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + eps * g / (flat_norm(g) + 1e-12)).clamp(0.0, 1.0)


@contextlib.contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block (if ``enabled``) and restore each submodule's own previous mode after
    (``model.train(was_training)`` would also switch a frozen batch norm, or the model inside a wrapper made in
    train mode, to training)."""
    modes = [(module, module.training) for module in model.modules()]
    if enabled:
        model.eval()
    try:
        yield model
    finally:
        model.train(modes[0][1])
        for module, training in modes[1:]:  # parents first (``modules()`` order): a child's own call comes after
            if module.training != training:
                module.train(training)
