"""The images of one binarized task, all inside the ε-ball around the clean image and inside [0, 1].

After Zimmermann, Brendel, Tramèr & Carlini, "Increasing Confidence in Adversarial Robustness Evaluations" (NeurIPS
2022), whose reference code is ``google-research/active-adversarial-tests``, ``active_tests/
decision_boundary_binarization.py`` (cited below by line):

* inner points (label 0, :func:`inner_points`): uniform in the ball of radius η·ε, η = 1 − 0.05
  (``relative_inner_boundary_gap=0.05``, lines 1127 and 830), then clipped to [0, 1] (``_sample_inner_points``,
  lines 95-133): L∞ uniform per pixel in [−ηε, ηε]; L2 a uniform direction scaled by ηε·U^(1/d);
* the boundary point (label 1, :func:`boundary_points`): L∞ a corner of the ball, ±ε per pixel with random signs,
  clipped (``sample_boundary_from_corners``, lines 141-149: the setting of the authors' scripts for adversarially
  trained models, e.g. ``case_studies/robust_models/gowal_binarization_test.sh``, ``--dbl-sample-from-corners``);
  L2 a uniform direction rescaled so that the *clipped* point lies exactly ε away (clipping-aware rescaling,
  lines 152-171);
* random points for the random-sampling baseline (:func:`random_points`): the authors' validation draws (lines
  893-943): uniform in the whole ball (η = 1), uniform on its surface (L∞: a uniform perturbation rescaled so that
  its clipped L∞ size is ε), and (L∞) corners.

Deviations: the clipping-aware rescaling is a bisection on the scale (60 halvings, ending just inside ε) for both
norms instead of Rauber's closed-form sort, with the same result up to float rounding; an L2 inner point's radius
uses the full dimension C·H·W (the reference raises U to 1/(H·W), line 114, since its ``x`` has no batch axis).
"""

from __future__ import annotations

import torch

ETA = 0.95  # inner points lie within ETA * eps (the reference's eta = 1 - relative_inner_boundary_gap 0.05)
HALVINGS = 60  # bisection steps of the clipping-aware rescaling: the scale to about 1e-18 of its range


def size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per sample: the L∞ or L2 size of ``delta`` (N, ...)."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _stacked(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.unsqueeze(0).expand(n, *x.shape)


def _unit_l2(n: int, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """``n`` directions uniform on the L2 unit sphere of ``shape``."""
    d = torch.randn((n, *shape), generator=generator)
    return d / d.flatten(1).norm(dim=1).view(-1, *[1] * len(shape))


def inner_points(
    x: torch.Tensor, n: int, eps: float, norm: str, generator: torch.Generator, radius: float = ETA,
) -> torch.Tensor:
    """``n`` points uniform in the ball of ``radius * eps`` around ``x`` (C, H, W), clipped to [0, 1]."""
    if norm == "linf":
        delta = (2 * torch.rand((n, *x.shape), generator=generator) - 1) * radius * eps
    else:
        scale = torch.rand(n, generator=generator) ** (1 / x.numel()) * radius * eps
        delta = _unit_l2(n, x.shape, generator) * scale.view(-1, *[1] * x.dim())
    return (_stacked(x, n) + delta).clamp(0, 1)


def rescaled_to_sphere(x: torch.Tensor, delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``clip(x + s * delta)`` per sample, with ``s`` chosen so that the clipped perturbation's size is ε (just
    inside it, by bisection); where clipping leaves less than ε of room in ``delta``'s direction, as far as it goes."""
    flat_x, flat_d = _stacked(x, delta.shape[0]).flatten(1), delta.flatten(1)
    room = torch.where(flat_d >= 0, 1 - flat_x, flat_x)
    lo = torch.zeros(delta.shape[0], dtype=delta.dtype)
    hi = (room / flat_d.abs().clamp_min(1e-20)).amax(1)  # beyond it no pixel moves further
    for _ in range(HALVINGS):
        mid = (lo + hi) / 2
        short = size((flat_x + mid[:, None] * flat_d).clamp(0, 1) - flat_x, norm) < eps
        lo, hi = torch.where(short, mid, lo), torch.where(short, hi, mid)
    return (flat_x + lo[:, None] * flat_d).clamp(0, 1).view_as(delta)


def boundary_points(x: torch.Tensor, n: int, eps: float, norm: str, generator: torch.Generator,
                    corners: bool = True) -> torch.Tensor:
    """``n`` points on the ε-sphere around ``x``: L∞ corners (``corners``) or uniform perturbations rescaled to the
    sphere after clipping; L2 uniform directions rescaled to the sphere after clipping."""
    shape = (n, *x.shape)
    if norm == "linf" and corners:
        signs = torch.randint(0, 2, shape, generator=generator, dtype=x.dtype) * 2 - 1
        return (_stacked(x, n) + signs * eps).clamp(0, 1)
    if norm == "linf":
        delta = (2 * torch.rand(shape, generator=generator) - 1) * eps
    else:
        delta = _unit_l2(n, x.shape, generator) * eps
    return rescaled_to_sphere(x, delta, eps, norm)


def random_points(
    x: torch.Tensor, n: int, eps: float, norm: str, generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The random-sampling baseline's ``n`` points of each kind: ``inner`` (uniform in the whole ball), ``surface``
    and, under L∞, ``corners``."""
    points = {"inner": inner_points(x, n, eps, norm, generator, radius=1.0),
              "surface": boundary_points(x, n, eps, norm, generator, corners=False)}
    if norm == "linf":
        points["corners"] = boundary_points(x, n, eps, norm, generator, corners=True)
    return points
