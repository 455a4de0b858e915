"""Gradient attacks with a fixed budget: FGSM, PGD and PGD on the Carlini-Wagner margin loss.

References:
- FGSM: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
- PGD: Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
  Adversarial Attacks", ICLR 2018.
- CW margin loss: Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.

Contract (docs/ARCHITECTURE.md, "Attacks"): pure functions, ``x`` in [0, 1], ``eps`` a float or an (N,)
tensor, the result inside the ε-ball and [0, 1], detached. Attacks never change the model's mode and
never write ``.grad`` on its parameters (gradients are taken w.r.t. the input only).

Cost per sample and per attempt, counted by :func:`robustlab.attacks.counting.count_passes`:
- ``fgsm``: 1 forward, 1 backward.
- ``pgd``/``cw``: iterate 0 is the start point; iterate k (k < steps) is checked on the forward that
  also gives its gradient, and the final iterate by one extra forward without gradient. A sample first
  successful at iterate k < steps costs k + 1 forwards and k + 1 backwards and leaves the attack; a
  sample never successful (or first successful at the final iterate) costs steps + 1 forwards and
  steps backwards. Restart r runs only on the samples that restarts 1..r-1 did not break.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from robustlab.attacks._common import check_norm, flat_norm, linf_bounds, per_sample, project_l2
from robustlab.attacks._common import random_start as _random_start
from robustlab.attacks.losses import LossFn, get_loss, margin
from robustlab.errors import UserError

SuccessFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim < 2:
        raise UserError(f"x must be a batch of shape (N, ...), got shape {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise UserError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")


def _eps(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    e = per_sample(eps, x)
    if e.numel() and not bool(torch.isfinite(e).all() and (e >= 0).all()):
        raise UserError("eps must be finite and >= 0")
    return e


def _objective(loss: str | LossFn, targeted: bool) -> LossFn:
    """The per-sample quantity to *maximise*: the loss, or minus the loss toward the targets."""
    fn = get_loss(loss)
    return (lambda logits, y: -fn(logits, y)) if targeted else fn


def _success(targeted: bool, kappa: float = 0.0) -> SuccessFn:
    """Per-sample success: argmax != y (untargeted) or argmax == y (targeted); with kappa > 0, the
    margin to the label (resp. of the target) must reach kappa."""

    def fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if kappa > 0:
            m = margin(logits, y)
            return (-m if targeted else m) >= kappa
        pred = logits.argmax(dim=1)
        return pred == y if targeted else pred != y

    return fn


def _step(x_adv: torch.Tensor, grad: torch.Tensor, step_size: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Ascent step: sign of the gradient (L∞) or the L2-normalised gradient (L2), times ``step_size``."""
    if norm == "linf":
        return x_adv + step_size * grad.sign()
    return x_adv + step_size * grad / flat_norm(grad).clamp_min(1e-12)


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "linf",
    loss: str | LossFn = "ce",
    targeted: bool = False,
) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size ``eps`` from ``x``.

    L∞: ``x + eps * sign(∇ loss)``; L2 [ours]: ``x + eps * ∇ / ‖∇‖`` (the "fast gradient" L2 variant).
    No random start, no success check; the result is clipped to [0, 1]. ``targeted=True`` steps *down*
    the loss toward the classes in ``y``. Cost: one forward and one backward per sample.
    """
    norm = check_norm(norm)
    _check_inputs(x, y)
    x = x.detach()
    eps_t = _eps(eps, x)
    objective = _objective(loss, targeted)
    with torch.enable_grad():
        x_req = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(model(x_req), y).sum(), x_req)
    return _step(x, grad, eps_t, norm).clamp(0.0, 1.0).detach()


def _pgd_attempt(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    *,
    norm: str,
    steps: int,
    step_size: float,
    objective: LossFn,
    success: SuccessFn,
    random_start: bool,
    generator: torch.Generator | None,
    x_init: torch.Tensor | None = None,
    early_stop: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One PGD attempt on a subset. Returns ``(x_adv, found)``: per sample the first successful
    iterate if any (``found``), else the last iterate. Successful samples leave the active batch.
    With ``early_stop=False`` no iterate is checked: every sample takes all steps and the last
    iterate is returned (``found`` all False), the training-time adversary."""
    out = x.clone()
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if x_init is not None:
        x_adv = x_init.detach().clone()
    else:
        x_adv = _random_start(x, eps, norm, generator) if random_start else x.clone()
    # Active set: indices into the subset, with their clean inputs, targets, ε and L∞ bounds.
    idx = torch.arange(x.shape[0], device=x.device)
    x0, ya, ea = x, y, eps
    lower, upper = linf_bounds(x, eps) if norm == "linf" else (x, x)  # (x, x): unused for L2
    for _ in range(steps):
        if idx.numel() == 0:
            break
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_adv)
            (grad,) = torch.autograd.grad(objective(logits, ya).sum(), x_adv)
        x_adv = x_adv.detach()
        ok = success(logits.detach(), ya) if early_stop else None
        if ok is not None and bool(ok.any()):
            out[idx[ok]] = x_adv[ok]
            found[idx[ok]] = True
            keep = ~ok
            idx, x_adv, grad, x0, ya, ea = idx[keep], x_adv[keep], grad[keep], x0[keep], ya[keep], ea[keep]
            lower, upper = lower[keep], upper[keep]
        x_adv = _step(x_adv, grad, step_size, norm)
        x_adv = torch.min(torch.max(x_adv, lower), upper) if norm == "linf" else project_l2(x0, x_adv, ea)
    if not early_stop:
        return x_adv, found
    if idx.numel():
        with torch.no_grad():
            ok = success(model(x_adv), ya)
        out[idx] = x_adv
        found[idx] = ok
    return out, found


def _pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str,
    steps: int,
    step_size: float,
    restarts: int,
    objective: LossFn,
    success: SuccessFn,
    random_start: bool,
    generator: torch.Generator | None,
    x_init: torch.Tensor | None = None,
    early_stop: bool = True,
) -> torch.Tensor:
    """Validate, then run ``restarts`` attempts, each only on the samples not yet broken."""
    norm = check_norm(norm)
    _check_inputs(x, y)
    if int(steps) != steps or steps < 0:
        raise UserError(f"steps must be an integer >= 0, got {steps!r}")
    if int(restarts) != restarts or restarts < 1:
        raise UserError(f"restarts must be an integer >= 1, got {restarts!r}")
    if not step_size >= 0:
        raise UserError(f"step_size must be >= 0, got {step_size!r}")
    x = x.detach()
    y = y.detach()
    eps_t = _eps(eps, x)
    if x_init is not None and x_init.shape != x.shape:
        raise UserError(f"x_init must have the shape of x {tuple(x.shape)}, got {tuple(x_init.shape)}")
    if not early_stop:
        adv, _ = _pgd_attempt(
            model, x, y, eps_t, norm=norm, steps=int(steps), step_size=float(step_size), objective=objective,
            success=success, random_start=random_start, generator=generator, x_init=x_init, early_stop=False,
        )
        return adv
    x_adv = x.clone()
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(int(restarts)):
        todo = (~broken).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        adv, ok = _pgd_attempt(
            model, x[todo], y[todo], eps_t[todo], norm=norm, steps=int(steps), step_size=float(step_size),
            objective=objective, success=success, random_start=random_start, generator=generator,
            x_init=None if x_init is None else x_init[todo],
        )
        x_adv[todo] = adv
        broken[todo] = ok
    return x_adv


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "linf",
    steps: int = 10,
    step_size: float = 2 / 255,
    restarts: int = 1,
    loss: str | LossFn = "ce",
    random_start: bool = True,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    x_init: torch.Tensor | None = None,
    early_stop: bool = True,
) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018), L∞ or L2, with restarts on survivors.

    Each attempt starts from a uniform random point of the ε-ball (``random_start``) and takes
    ``steps`` steps: L∞ ``x + step_size * sign(∇)`` clamped to the ε-ball ∩ [0, 1]; L2
    ``x + step_size * ∇/‖∇‖`` projected on the ε-ball then [0, 1]. ``loss`` is a name from
    :mod:`robustlab.attacks.losses` or a callable ``(logits, y) -> (N,)``; the step follows the gradient
    of its sum. ``targeted=True``: ``y`` holds targets, the loss is minimised, success is ``argmax == y``.

    Deviations from Madry et al. [ours]: per sample the first successful iterate is kept (the final
    iterate is checked too, one extra forward) and successful samples stop being attacked; samples never
    broken return the last iterate of the last attempt; restart r only re-attacks samples that earlier
    attempts did not break. ``eps`` may be an (N,) tensor; ``generator`` drives the random starts (the
    global RNG if None). Cost: see the module docstring.

    Training use: ``early_stop=False`` runs Madry's adversary exactly (every sample takes all
    ``steps``, the last iterate is returned, no checks: ``steps`` forwards and backwards, one attempt),
    and ``x_init`` replaces the random start (TRADES starts at x + 0.001·N(0, I)).
    """
    return _pgd(
        model, x, y, eps=eps, norm=norm, steps=steps, step_size=step_size, restarts=restarts,
        objective=_objective(loss, targeted), success=_success(targeted), random_start=random_start,
        generator=generator, x_init=x_init, early_stop=early_stop,
    )


def cw_loss(kappa: float = 0.0, targeted: bool = False) -> LossFn:
    """Per-sample CW margin objective to *maximise* (Carlini & Wagner 2017, their f_6, negated).

    Untargeted: ``min(max_{k != y} z_k - z_y, kappa)``; targeted (``y`` = targets):
    ``min(z_t - max_{k != t} z_k, kappa)``. The cap at ``kappa`` stops pushing once a sample is
    misclassified with confidence ``kappa``.
    """

    def fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = margin(logits, y)
        return (-m if targeted else m).clamp_max(kappa)

    return fn


def cw(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "linf",
    steps: int = 10,
    step_size: float = 2 / 255,
    restarts: int = 1,
    kappa: float = 0.0,
    random_start: bool = True,
    targeted: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD on the Carlini & Wagner (2017) margin loss ``max_{k != y} z_k - z_y`` (Madry et al. 2018 steps).

    Same steps, restarts, best-iterate rule and cost as :func:`pgd`; the loss is :func:`cw_loss`.
    With ``kappa > 0`` [ours] a sample counts as broken only once its margin reaches ``kappa`` (so the
    kept iterate is the first one misclassified with that confidence); ``kappa = 0`` is plain
    misclassification. This is the fixed-budget "CW-K" attack of robustness papers, not CW's
    minimal-norm optimisation.
    """
    if not kappa >= 0:
        raise UserError(f"kappa must be >= 0, got {kappa!r}")
    return _pgd(
        model, x, y, eps=eps, norm=norm, steps=steps, step_size=step_size, restarts=restarts,
        objective=cw_loss(kappa, targeted), success=_success(targeted, kappa), random_start=random_start,
        generator=generator,
    )
