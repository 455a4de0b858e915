"""FAB, the Fast Adaptive Boundary attack, untargeted and targeted (FAB-T), for L∞ and L2.

Croce & Hein, "Minimally distorted Adversarial Examples with a Fast Adaptive Boundary Attack", ICML 2020
(Algorithm 1). Each iteration linearises the decision boundary between the true class ``y`` and one
other class ``s`` at the iterate ``x_i``, projects both ``x_i`` and the original ``x`` onto that
hyperplane intersected with the box [0,1]^d (the paper's box-constrained projection), and moves to a
convex combination of the two projections, biased toward ``x`` by ``alpha = min(‖δ_i‖/(‖δ_i‖+‖δ_orig‖),
alpha_max)`` and extrapolated by ``eta``. A successful iterate is recorded if it is the smallest so far
and then pulled back toward ``x`` by ``beta``. Restarts after the first start from a random point in a
ball of radius ``min(best norm, eps)/2`` around ``x``. The untargeted attack picks ``s`` as the class
whose linearised boundary is closest; FAB-T (Croce & Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML 2020) fixes ``s`` to each of the
top ``n_target_classes`` non-true classes by clean logit in turn, each run only on samples not yet broken.

Deviations and choices where the papers leave room [ours]:

- Success means misclassified (``argmax != y``), also for FAB-T, as robust accuracy requires.
- Restart points are uniform in the L_p ball of radius ``min(best norm, eps)/2`` (``_common.random_start``)
  and clipped to [0,1], not on its sphere.
- If the hyperplane misses the box, the projection is the box point reached when every coordinate is at
  its face in the direction of the hyperplane (the closest one can get along the projection path).
- A sample whose found norm is ``<= eps`` is not attacked again by later targets or restarts (evaluation
  protocol), and with ``compact=True`` (default) it also leaves the batch inside a run as soon as that
  happens, so the returned norms are minimal only over the steps made; ``compact=False`` runs every sample
  for all ``steps`` as the reference does (same verdicts: the samples' computations are independent).
  With ``eps = 0`` nothing leaves early and FAB returns its minimal norms.
- Each run ends with the final search of the authors' FAB code (``linear_approximation_search``, its
  "final search" flag, off by default there, 3 steps; AutoAttack's FAB has none), on by default here
  with 3 steps: a search on the segment from ``x`` to the best point, which only shortens it and keeps it
  misclassified, and can bring a point found just outside the eps-ball inside it.
- L1 is not implemented.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustlab.attacks._common import check_norm, per_sample, random_start
from robustlab.errors import UserError


def _lp(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row L∞ or L2 norm of a flat (N, D) tensor."""
    return v.abs().amax(dim=1) if norm == "linf" else v.norm(dim=1)


def _project_box_hyperplane(x: torch.Tensor, w: torch.Tensor, rho: torch.Tensor, norm: str) -> torch.Tensor:
    """Minimal L_p ``δ`` with ``<w, δ> = -rho`` and ``0 <= x + δ <= 1``, row-wise on flat (N, D) tensors.

    The optimum is ``δ = clip(t·d, -x, 1-x)`` with ``d = sign(w)`` (L∞) or ``d = w`` (L2) after orienting
    ``w`` so that ``-rho >= 0``, and ``t >= 0`` the root of ``g(t) = Σ_i a_i·min(t, t_i) = |rho|``, where
    ``a_i = w_i d_i >= 0`` and ``t_i`` is where coordinate i reaches its box face. ``g`` is piecewise linear
    and nondecreasing, so sorting the ``t_i`` gives the root exactly in O(D log D) (FAB, Sec. 3.1).
    """
    w = torch.where((rho > 0).unsqueeze(1), -w, w)
    c = rho.abs().unsqueeze(1)
    d = w.sign() if norm == "linf" else w
    a = w * d
    face = torch.where(d > 0, 1.0 - x, -x)
    moving = d != 0
    t_sat = torch.where(moving, face / torch.where(moving, d, torch.ones_like(d)), torch.zeros_like(d))
    t_sorted, order = t_sat.sort(dim=1)
    a_sorted = a.gather(1, order)
    prefix = (a_sorted * t_sorted).cumsum(1) - a_sorted * t_sorted  # Σ_{j<k} a_j t_j
    suffix = a_sorted.flip(1).cumsum(1).flip(1)  # Σ_{j>=k} a_j
    k = (prefix + t_sorted * suffix < c).sum(1, keepdim=True)  # first breakpoint with g(t_k) >= c
    feasible = k < x.shape[1]
    k = k.clamp_max(x.shape[1] - 1)
    t = (c - prefix.gather(1, k)) / suffix.gather(1, k).clamp_min(1e-12)
    t = torch.where(feasible, t, t_sorted[:, -1:])
    return torch.clamp(t * d, min=-x, max=1.0 - x)


def _linearise(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, norm: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z_s - z_y, ∇_x(z_s - z_y))`` at ``x`` as ((N,), (N, D)), for the target ``s`` or, if None, the class
    whose linearised boundary is closest in the dual norm (FAB, Sec. 3). Gradients go to the input only."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        z_y = logits.gather(1, y.unsqueeze(1))
        if target is not None:
            diff = (logits.gather(1, target.unsqueeze(1)) - z_y).squeeze(1)
            (grad,) = torch.autograd.grad(diff.sum(), xg)
            return diff.detach(), grad.flatten(1)
        n_classes = logits.shape[1]
        rows = [
            torch.autograd.grad(logits[:, k].sum(), xg, retain_graph=k < n_classes - 1)[0].flatten(1)
            for k in range(n_classes)
        ]
    jac = torch.stack(rows, dim=1)  # (N, K, D)
    w = jac - jac[torch.arange(x.shape[0]), y].unsqueeze(1)
    diff = (logits - z_y).detach()
    dual = w.abs().sum(2) if norm == "linf" else w.norm(dim=2)
    dist = (diff.abs() / (dual + 1e-12)).scatter(1, y.unsqueeze(1), math.inf)
    s = dist.argmin(dim=1)
    idx = torch.arange(x.shape[0])
    return diff[idx, s], w[idx, s]


_SEARCH_OVERSHOOT = 0.01


def _final_search(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, steps: int
) -> torch.Tensor:
    """FAB's final search (the authors' ``linear_approximation_search``, Croce & Hein 2020): on the segment
    from ``x`` (classified ``y``) to ``x_adv`` (misclassified), move to the root of the linearly interpolated
    logit difference between ``y`` and the adversarial class, and keep it as the new clean or adversarial
    end. The adversarial end only moves toward ``x``: its distance never grows and it stays misclassified.
    [ours] Each point goes ``_SEARCH_OVERSHOOT`` of the remaining way past the interpolated root, so that it
    does not land on the boundary itself, where batch-dependent rounding could flip a later verdict."""
    rows = torch.arange(x.shape[0], device=x.device)
    lo, hi = x, x_adv
    with torch.no_grad():
        z_lo, z_hi = model(lo), model(hi)
        label = z_hi.argmax(1)
        for _ in range(steps):
            gap_lo = z_lo[rows, y] - z_lo[rows, label]
            gap_hi = z_hi[rows, label] - z_hi[rows, y]
            t = gap_lo / (gap_lo + gap_hi + 1e-10)
            t = torch.where((t >= 0) & (t <= 1), t + _SEARCH_OVERSHOOT * (1 - t), torch.ones_like(t))
            t = t.view(-1, *([1] * (x.ndim - 1)))
            mid = lo + t * (hi - lo)
            z_mid = model(mid)
            clean = z_mid.argmax(1) == y
            keep = clean.view(-1, *([1] * (x.ndim - 1)))
            lo, z_lo = torch.where(keep, mid, lo), torch.where(clean.unsqueeze(1), z_mid, z_lo)
            hi, z_hi = torch.where(keep, hi, mid), torch.where(clean.unsqueeze(1), z_hi, z_mid)
            label = torch.where(clean, label, z_mid.argmax(1))
    return hi


def _fab_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_init: torch.Tensor,
    target: torch.Tensor | None,
    eps: torch.Tensor,
    *,
    norm: str,
    steps: int,
    alpha_max: float,
    eta: float,
    beta: float,
    final_search: int,
    compact: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One start of FAB's inner loop (Algorithm 1) from ``x_init``: ``(x_best, norms)``, inf where none found.

    With ``compact``, a sample leaves the batch once its best norm is ``<= eps`` ((N,) tensor); its state
    (iterate, best point, target) stays in full-size tensors indexed by the active rows.
    """
    xf = x.flatten(1)
    best = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
    x_best = xf.clone()
    cur = x_init.flatten(1).clone()
    active = torch.arange(x.shape[0], device=x.device)
    for _ in range(steps):
        if compact:
            active = active[best[active] > eps[active]]
            if active.numel() == 0:
                break
        xa, ya, now = xf[active], y[active], cur[active]
        rho, w = _linearise(model, now.view(-1, *x.shape[1:]), ya, None if target is None else target[active], norm)
        delta = _project_box_hyperplane(now, w, rho, norm)
        delta_orig = _project_box_hyperplane(xa, w, rho + ((xa - now) * w).sum(1), norm)
        n_cur, n_orig = _lp(delta, norm), _lp(delta_orig, norm)
        alpha = (n_cur / (n_cur + n_orig).clamp_min(1e-12)).clamp_max(alpha_max).unsqueeze(1)
        new = ((1 - alpha) * (now + eta * delta) + alpha * (xa + eta * delta_orig)).clamp(0.0, 1.0)
        with torch.no_grad():
            adv = model(new.view(-1, *x.shape[1:])).argmax(1) != ya
        dist = _lp(new - xa, norm)
        better = adv & (dist < best[active])
        best[active[better]] = dist[better]
        x_best[active[better]] = new[better]
        cur[active] = torch.where(adv.unsqueeze(1), xa + beta * (new - xa), new)
    found = torch.isfinite(best).nonzero().squeeze(1)
    if final_search > 0 and found.numel() > 0:
        shape = (-1, *x.shape[1:])
        searched = _final_search(model, x[found], x_best[found].view(shape), y[found], final_search).flatten(1)
        x_best[found] = searched
        best[found] = _lp(searched - xf[found], norm)
    return x_best.view_as(x), best


def _fab(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    n_target_classes: int | None = None,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    generator: torch.Generator | None = None,
    final_search: int = 3,
    compact: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FAB worker: ``(x_best, norms)``, the smallest misclassified point found per sample and its L_p
    distance to ``x`` (0 for clean errors, inf and ``x`` itself where nothing was found).

    ``n_target_classes=None`` runs untargeted FAB; an int runs FAB-T over that many targets. ``eps`` only
    decides which samples count as broken (not attacked again; with ``compact``, also leaving the batch
    inside a run) and caps the restart radius. ``final_search``: steps of the final search (0: none).
    """
    norm = check_norm(norm)
    if steps < 1 or restarts < 1 or (n_target_classes is not None and n_target_classes < 1):
        raise UserError("fab: steps, restarts and n_target_classes must be >= 1")
    if final_search < 0:
        raise UserError(f"fab: final_search must be >= 0 steps, got {final_search}")
    if not (0.0 <= alpha_max <= 1.0 and eta >= 1.0 and 0.0 < beta < 1.0):
        raise UserError("fab: need 0 <= alpha_max <= 1, eta >= 1 and 0 < beta < 1")
    eps_t = per_sample(eps, x).flatten()
    if not bool(torch.isfinite(eps_t).all()) or bool((eps_t < 0).any()):
        raise UserError("fab: eps must be finite and >= 0")
    x = x.detach()
    with torch.no_grad():
        logits = model(x)
    norms = torch.where(logits.argmax(1) != y, 0.0, math.inf).to(x.dtype)
    x_best = x.clone()
    if n_target_classes is None:
        targets: list[torch.Tensor | None] = [None]
    else:
        others = logits.detach().scatter(1, y.unsqueeze(1), -math.inf)
        ranked = others.argsort(dim=1, descending=True)[:, : min(n_target_classes, logits.shape[1] - 1)]
        targets = list(ranked.unbind(1))
    for target in targets:
        for restart in range(restarts):
            active = (norms > eps_t).nonzero().squeeze(1)
            if active.numel() == 0:
                return x_best, norms
            xa = x[active]
            x_init = xa
            if restart > 0:
                radius = torch.minimum(norms[active], eps_t[active]) / 2
                x_init = random_start(xa, radius.view(-1, *([1] * (x.ndim - 1))), norm, generator)
            xb, nb = _fab_run(
                model, xa, y[active], x_init, None if target is None else target[active], eps_t[active],
                norm=norm, steps=steps, alpha_max=alpha_max, eta=eta, beta=beta, final_search=final_search,
                compact=compact,
            )
            better = nb < norms[active]
            norms[active[better]] = nb[better]
            x_best[active[better]] = xb[better]
    return x_best, norms


def _within_eps(x: torch.Tensor, x_best: torch.Tensor, norms: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """``x_best`` where its norm is ``<= eps``, else ``x``."""
    ok = (norms <= per_sample(eps, x).flatten()).view(-1, *([1] * (x.ndim - 1)))
    return torch.where(ok, x_best, x.detach())


def fab(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    generator: torch.Generator | None = None,
    final_search: int = 3,
    compact: bool = True,
) -> torch.Tensor:
    """Untargeted FAB (Croce & Hein, ICML 2020). Returns ``x_adv``: per sample, the smallest misclassified
    point found if its L_p distance to ``x`` is ``<= eps``, else ``x``. ``final_search`` (steps, 0: none)
    and ``compact`` (broken samples leave the batch) as in the module docstring."""
    x_best, norms = _fab(
        model, x, y, eps=eps, norm=norm, steps=steps, restarts=restarts, n_target_classes=None,
        alpha_max=alpha_max, eta=eta, beta=beta, generator=generator,
        final_search=final_search, compact=compact,
    )
    return _within_eps(x, x_best, norms, eps)


def fab_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "linf",
    steps: int = 100,
    n_target_classes: int = 9,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    generator: torch.Generator | None = None,
    final_search: int = 3,
    compact: bool = True,
) -> torch.Tensor:
    """FAB-T (Croce & Hein, ICML 2020, as used in AutoAttack): FAB toward each of the top
    ``n_target_classes`` non-true classes by clean logit, on samples not yet broken. ``y`` holds the true
    labels. Returns ``x_adv`` as :func:`fab` does."""
    x_best, norms = _fab(
        model, x, y, eps=eps, norm=norm, steps=steps, restarts=restarts, n_target_classes=n_target_classes,
        alpha_max=alpha_max, eta=eta, beta=beta, generator=generator,
        final_search=final_search, compact=compact,
    )
    return _within_eps(x, x_best, norms, eps)
