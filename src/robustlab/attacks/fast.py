"""The members of the cheap ``fast`` evaluation protocol: margin PGD with restarts on near-boundary
survivors, APGD-T on Jacobian-ranked targets for as many ranks as pay, and a Square Attack whose
budget escalates when gradients vanish or when it breaks what the gradient members missed. Each is a
pure attack function ``(model, x, y, *, eps, ...) -> x_adv``.

Sources, formula by formula:

* **A³** (Liu et al., "Practical evaluation of adversarial robustness via adaptive auto attack",
  CVPR 2022; released code ``liuye6666/adaptive_auto_attack``, ``Adaptive_Auto_Attack_main.py``):
  the margin loss ``max_{k != y} z_k - z_y``; plain sign-gradient steps (L2: normalised gradient) whose
  size follows a cosine from ``eps`` down to ``0.1 eps`` (budgets of at most 10 iterations) or
  ``0.001 eps`` (longer), ``size_s = lo + (eps - lo) (1 + cos(pi s / (N + 1))) / 2``; the
  *adaptive direction initialisation* of later restarts: a few steps of size ``eps`` on the
  output-diversified loss ``w . z`` (ODI, Tashiro et al. 2020) with ``w ~ U(-1, 1)^K``,
  ``w_y = (K/10) U(-0.1, 0.5)`` and ``w_t = 0.8 K/10`` for a likely target ``t`` (the next-ranked clean
  logit at each restart, as A³ cycles through its sorted logits); 7 such steps as A³'s later restarts;
  restarts only on the survivors with the highest best margin (closest to the boundary), the share
  shrinking at each restart as A³'s ``alpha``.
* **MALT** (Melamed et al., "Mesoscopic almost linearity targeting", NeurIPS 2024): targets ranked by
  the linearised distance to each class boundary, ``(z_y - z_t) / ||grad_x (z_y - z_t)||_*`` (dual
  norm: L1 for L∞, L2 for L2) at the clean input, smallest first; the targeted runs use APGD-T's
  targeted DLR loss ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` (Croce & Hein 2020), as MALT does.
* **Cycle detection** (Doldo et al., CVPR 2025): a sign-gradient iterate that returns to the point it
  held one or two steps before will keep cycling; such a sample stops at once with its best point.
* **Square** (Andriushchenko et al., ECCV 2020) as in :mod:`robustlab.attacks.square`.

Deviations and choices [ours]:

* The first restart starts uniformly in the ball (A³ starts its first pass from a random vertex).
  A³'s online statistics that flip the signs of ``w_y`` / ``w_t`` are left out: we always use its
  default branch. A³'s global iteration budget (100 per sample, spread over 13 outer restarts) is
  replaced by fixed ``steps`` per restart and a fixed number of restarts.
* Targeted runs are APGD-T's attempts (APGD's step-size rule and momentum, not the cosine steps, and no
  stall stop), with 50 iterations instead of 100: on the CIFAR-10 trades+ancra model of
  ``benchmarks/fast_eval.py`` APGD-T broke a sample at its target in 24 of 32 random starts (25
  iterations: 21) where the cosine steps broke it in 9 (50 iterations) or 5 (100). The number of
  targets is adaptive: the first ``min_targets`` ranks (MALT attacks a fixed top 5), then one more rank
  while the ranks so far broke at least ``min_yield`` of the (sample, target) runs they made, up to
  ``max_targets``. Before the ranks, a sweep (``sweep_steps`` = 5 in ``fast``) tries every candidate
  target once: a digits trades+ancra sample (L2) broke only at the target MALT ranks 6th, in 8 of 8
  starts at 5 iterations as at 100, and beyond the ranks the yield rule reached; a CIFAR-10 trades+ancra
  sample broke at its target (MALT's 5th) in 5 of 8 starts at 5, 50 and 100 iterations alike: its luck is
  in the start, not the length. On a model whose targets pay (that trades+ancra model: breaks at every rank, in no
  order of the ranking) this runs all 9 ranks as APGD-T does; on the others 2 or 3. Fewer than 4
  classes: the targeted margin ``z_t - z_y`` (the DLR denominator needs 4). An earlier version
  (cosine steps on the targeted margin; the ranks within 2x the best distance, at most 3) left 5
  samples of that model that APGD-T broke, 2.0 points above AutoAttack on 200 images.
* Stall (the margin member): a sample whose best loss has not risen for ``patience`` iterations stops (a
  cheaper cousin of cycle detection for the cosine schedule, whose shrinking steps rarely repeat a point
  exactly).
* Broken samples leave the working batch at once, keeping their first misclassified iterate.
* ``square_escalating`` measures, on its own inputs, the share of samples whose margin-loss input
  gradient is all zero or non-finite (one counted forward and backward); above ``zero_fraction`` it
  spends ``escalated_queries`` (the standard 5,000) instead of ``queries`` on each sample: on a model
  whose gradients are masked (e.g. a quantised input) only the black-box member can break samples.
  Otherwise the samples nearest the boundary (the ``near_share`` with the highest clean margin) get
  ``near_restarts`` more independent runs, stacked into the same batch as rows of their own (the
  Square's cost on a CPU is per iteration more than per row): restarts, not more queries, break the
  samples that a Square breaks by luck; on the digits trades+ancra model one fell to a single Square
  in 0 of 16 draws at 500 queries, 5 at 1,000, 6 at 2,000, 7 at 3,000, 5 at 5,000 (AutoAttack's
  Square broke it; ``fast`` with 500 queries and three 1,000-query restarts missed it in 6 of 6 seeds:
  with AutoAttack's three seeds at 166, 167, 167 robust of 180 that ``fast`` left 167, 168, 169). When
  the first Square broke at least ``escalate_yield`` of its samples (all of which survived the gradient
  members: five times the ``black_box`` check's threshold, a strong sign of masking, so the cheap
  budget is not to be trusted), a fresh Square spends the standard budget on all survivors; at 1% it
  fired on that digits model (2 of 167) and cost more than AutoAttack's whole evaluation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from robustlab.attacks._common import check_norm, flat_norm, linf_bounds, per_sample, project_l2, random_start
from robustlab.attacks.apgd import RHO, _apgd_attempt, _loss_and_grad, _select
from robustlab.attacks.losses import dlr_targeted, margin
from robustlab.attacks.square import square
from robustlab.errors import UserError

__all__ = ["cosine_sizes", "margin_restarts", "ranked_targets", "ranked_targeted", "square_escalating"]

ODI_TARGET_WEIGHT = 0.8  # A³: w_t = 0.8 K/10
ODI_LABEL_RANGE = (-0.1, 0.5)  # A³: w_y = (K/10) U(-0.1, 0.5)


def cosine_sizes(steps: int) -> list[float]:
    """A³'s step sizes as fractions of eps for ``steps`` iterations (cosine from 1 to 0.1 or 0.001)."""
    low = 0.1 if steps <= 10 else 0.001
    return [low + (1.0 - low) * (1 + math.cos(math.pi * s / (steps + 1))) / 2 for s in range(steps)]


def _untargeted(logits: torch.Tensor, y: torch.Tensor, _target: torch.Tensor) -> torch.Tensor:
    return margin(logits, y)


def _targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return (logits.gather(1, target.unsqueeze(1)) - logits.gather(1, y.unsqueeze(1))).squeeze(1)


class _Ball:
    """The feasible set of a subset: L∞ box bounds or the L2 ball, plus the steepest-ascent step."""

    def __init__(self, x: torch.Tensor, eps: torch.Tensor, norm: str) -> None:
        self.x, self.eps, self.norm = x, eps, norm
        self.lower, self.upper = linf_bounds(x, eps) if norm == "linf" else (x, x)

    def rows(self, index: torch.Tensor) -> "_Ball":
        return _Ball(self.x[index], self.eps[index], self.norm)

    def step(self, z: torch.Tensor, grad: torch.Tensor, size: torch.Tensor | float) -> torch.Tensor:
        if self.norm == "linf":
            return torch.minimum(torch.maximum(z + size * grad.sign(), self.lower), self.upper)
        return project_l2(self.x, z + size * grad / flat_norm(grad).clamp_min(1e-12), self.eps)


@dataclasses.dataclass
class _Work:
    """Per-sample state of the samples in the working batch (indexed along dim 0); ``k`` is each
    sample's own iteration, so samples that join a refilled batch follow their own schedule."""

    index: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor
    x_cur: torch.Tensor
    x_prev: torch.Tensor
    grad: torch.Tensor
    x_best: torch.Tensor
    loss_best: torch.Tensor
    stall: torch.Tensor
    k: torch.Tensor

    def keep(self, mask: torch.Tensor) -> "_Work":
        return _Work(**{f.name: getattr(self, f.name)[mask] for f in dataclasses.fields(self)})

    def join(self, other: "_Work") -> "_Work":
        fields = dataclasses.fields(self)
        return _Work(**{f.name: torch.cat([getattr(self, f.name), getattr(other, f.name)]) for f in fields})


def _descend(
    model: nn.Module, ball: _Ball, y: torch.Tensor, target: torch.Tensor, x0: torch.Tensor, *,
    steps: int, objective, patience: int, batch: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine-step sign PGD from ``x0``; returns ``(x_out, success, best_loss)`` per sample.

    A sample leaves as soon as it is misclassified (its iterate is kept), when its iterate repeats one
    of the two before it (a cycle), after ``patience`` iterations without a higher loss (a stall), or
    after ``steps`` iterations. ``batch``: the working batch holds at most that many samples and is
    refilled from the queue of untouched ones as samples leave, instead of shrinking (None: all at once).
    Each sample's iterates do not depend on which others share its batch.
    """
    n = x0.shape[0]
    size = min(batch or n, n)
    sizes = torch.tensor(cosine_sizes(steps), device=x0.device, dtype=x0.dtype)
    x_out, success = x0.clone(), torch.zeros(n, dtype=torch.bool, device=x0.device)
    best_loss = torch.full((n,), -math.inf, device=x0.device, dtype=torch.float64)

    def admit(index: torch.Tensor) -> _Work:
        loss, grad, logits = _loss_and_grad(model, x0[index], y[index], target[index], objective, need_grad=True)
        zeros = torch.zeros(index.numel(), dtype=torch.long, device=x0.device)
        w = _Work(index, y[index], target[index], x0[index], x0[index], grad, x0[index], loss, zeros, zeros.clone())
        return leave(w, logits, x0[index], torch.zeros_like(zeros, dtype=torch.bool))

    def leave(w: _Work, logits: torch.Tensor, x_now: torch.Tensor, done: torch.Tensor) -> _Work:
        broken = logits.argmax(1) != w.y
        idx = w.index[broken]
        x_out[idx], success[idx], best_loss[idx] = x_now[broken], True, w.loss_best[broken].double()
        stop = done & ~broken
        x_out[w.index[stop]], best_loss[w.index[stop]] = w.x_best[stop], w.loss_best[stop].double()
        stay = ~(broken | stop)
        return w if bool(stay.all()) else w.keep(stay)

    queue = torch.arange(n, device=x0.device)
    w, queue = admit(queue[:size]), queue[size:]
    while w.index.numel() or queue.numel():
        if w.index.numel() < size and queue.numel():
            take = size - w.index.numel()
            w, queue = w.join(admit(queue[:take])), queue[take:]
            continue
        sub = ball.rows(w.index)
        x_new = sub.step(w.x_cur, w.grad, sizes[w.k].view(-1, *([1] * (x0.ndim - 1))) * sub.eps)
        w.k = w.k + 1
        last = w.k >= steps
        loss, grad, logits = _loss_and_grad(model, x_new, w.y, w.target, objective, need_grad=not bool(last.all()))
        better = loss > w.loss_best
        w.x_best, w.loss_best = _select(better, x_new, w.x_best), torch.where(better, loss, w.loss_best)
        w.stall = torch.where(better, 0, w.stall + 1)
        flat = x_new.flatten(1)
        cycle = (flat == w.x_cur.flatten(1)).all(1) | (flat == w.x_prev.flatten(1)).all(1)
        w.x_prev, w.x_cur, w.grad = w.x_cur, x_new, w.grad if grad is None else grad
        w = leave(w, logits, x_new, cycle | (w.stall >= patience) | last)
    return x_out, success, best_loss


def _diversified_start(
    model: nn.Module, ball: _Ball, y: torch.Tensor, target: torch.Tensor, *, num_classes: int, steps: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """A³'s adaptive direction initialisation: ``steps`` steps of size eps on ``w . z`` from a random start,
    ``w`` pushed towards ``target``; a sample that becomes misclassified on the way stops moving."""
    x = ball.x
    n, scale = x.shape[0], num_classes / 10
    w = torch.rand((n, num_classes), generator=generator, device=x.device) * 2 - 1
    lo, hi = ODI_LABEL_RANGE
    w_y = (lo + (hi - lo) * torch.rand((n,), generator=generator, device=x.device)) * scale
    w = w.scatter(1, y.unsqueeze(1), w_y.unsqueeze(1)).scatter(1, target.unsqueeze(1), ODI_TARGET_WEIGHT * scale)
    x0 = random_start(x, ball.eps, ball.norm, generator)
    for _ in range(steps):
        x_in = x0.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_in)
            (grad,) = torch.autograd.grad((logits.float() * w).sum(), x_in)
        moving = logits.detach().argmax(1) == y
        x0 = _select(moving, ball.step(x0, torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0), ball.eps), x0)
    return x0.detach()


def _check(steps: int, restarts: int = 1, patience: int = 1) -> None:
    for name, value in (("steps", steps), ("restarts", restarts), ("patience", patience)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")


def _prepare(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, eps as (N,1,..), clean logits)``; samples already broken (clean-wrong or eps 0) need nothing."""
    eps_t = per_sample(eps, x)
    if (eps_t < 0).any():
        raise UserError("eps must be >= 0")
    x = x.detach()
    with torch.no_grad():
        logits = model(x)
    return x, eps_t, logits


def margin_restarts(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "linf",
    steps: int = 20,
    restarts: int = 4,
    start_steps: int = 7,
    keep: float = 0.5,
    patience: int = 10,
    batch: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted margin-loss PGD with A³'s cosine steps; restart ``r >= 1`` starts from A³'s diversified
    direction (``start_steps`` ODI steps towards the ``r``-th ranked clean logit) and attacks only the
    ``keep`` share of the survivors with the highest best margin (nearest the boundary; at least one).
    ``batch``: a working batch of at most that many samples, refilled as samples leave (None: all).
    Returns ``x_adv``: the first misclassified iterate, else the highest-margin point found."""
    norm = check_norm(norm)
    _check(steps, restarts, patience)
    if not 0.0 < keep <= 1.0:
        raise UserError(f"keep must be in (0, 1], got {keep}")
    x, eps_t, logits = _prepare(model, x, y, eps)
    num_classes = logits.shape[1]
    ranked = logits.float().scatter(1, y.unsqueeze(1), -math.inf).argsort(1, descending=True)[:, : num_classes - 1]
    x_adv = x.clone()
    broken = (logits.argmax(1) != y) | (eps_t.flatten() <= 0)
    best = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=torch.float64)
    for r in range(restarts):
        idx = (~broken).nonzero().squeeze(1)
        if r > 0 and idx.numel():
            share = max(1, math.ceil(keep ** r * idx.numel()))
            idx = idx[best[idx].argsort(descending=True)[:share]]
        if idx.numel() == 0:
            break
        ball = _Ball(x[idx], eps_t[idx], norm)
        target = ranked[idx, (r - 1) % (num_classes - 1)] if r > 0 else y[idx]
        x0 = random_start(ball.x, ball.eps, norm, generator) if r == 0 else _diversified_start(
            model, ball, y[idx], target, num_classes=num_classes, steps=start_steps, generator=generator)
        x_sub, ok, loss = _descend(model, ball, y[idx], target, x0, steps=steps, objective=_untargeted,
                                   patience=patience, batch=batch)
        take = ok | (loss > best[idx])
        x_adv[idx[take]], best[idx[take]] = x_sub[take], loss[take]
        broken[idx[ok]] = True
    return x_adv


def ranked_targets(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, candidates: int) -> torch.Tensor:
    """MALT's ranking: (N, candidates) classes among the ``candidates`` largest other logits, sorted by the
    linearised boundary distance ``(z_y - z_t) / ||grad (z_y - z_t)||_*`` (smallest first). One forward and
    ``candidates`` backward passes."""
    x_in = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_in).float()
        num_classes = logits.shape[1]
        candidates = min(candidates, num_classes - 1)
        pool = logits.detach().scatter(1, y.unsqueeze(1), -math.inf).argsort(1, descending=True)[:, :candidates]
        z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
        distance = torch.empty(pool.shape, device=x.device)
        for j in range(candidates):
            gap = z_y - logits.gather(1, pool[:, j : j + 1]).squeeze(1)
            (grad,) = torch.autograd.grad(gap.sum(), x_in, retain_graph=j < candidates - 1)
            grad = torch.nan_to_num(grad.flatten(1), nan=0.0, posinf=0.0, neginf=0.0)
            dual = grad.abs().sum(1) if norm == "linf" else grad.norm(dim=1)
            distance[:, j] = gap.detach() / dual.clamp_min(1e-12)
    return pool.gather(1, distance.argsort(1))


TARGETED_LOSSES = ("dlr", "margin")


def ranked_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "linf",
    steps: int = 50,
    min_targets: int = 2,
    max_targets: int = 9,
    candidates: int = 9,
    min_yield: float = 0.01,
    loss: str = "dlr",
    stack: bool = False,
    sweep_steps: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """APGD-T's attempt (Croce & Hein 2020: APGD's step-size rule and momentum, ``steps`` iterations from
    a uniform start) on the MALT-ranked targets, one rank per round, each round on the samples still
    robust; the number of rounds adapts to what they pay: after the first ``min_targets`` ranks, the
    next rank runs only while the ranks so far, pooled, broke at least ``min_yield`` of the (sample,
    target) runs they made (at most ``max_targets`` ranks of the ``candidates`` largest other logits).
    ``sweep_steps > 0``: first a short attempt of that many iterations on every candidate target, all
    (sample, target) pairs in one batch (its pairs count in the yield), for the samples whose one open target
    MALT ranks low.
    ``loss``: APGD-T's targeted DLR (needs 4 classes; fewer use the targeted margin) or the targeted
    margin ``z_t - z_y``. ``stack=True`` runs the first ``min_targets`` ranks as one batch of every
    (sample, target) pair (larger batches, for devices that prefer them; more passes; its yield counts
    every pair that broke its sample). Success means misclassified (any class)."""
    norm = check_norm(norm)
    _check(steps)
    if sweep_steps < 0:
        raise UserError(f"sweep_steps must be >= 0, got {sweep_steps}")
    if not 1 <= min_targets <= max_targets or candidates < 1 or not 0.0 <= min_yield <= 1.0:
        raise UserError(f"need 1 <= min_targets <= max_targets, candidates >= 1 and 0 <= min_yield <= 1, got "
                        f"{min_targets}, {max_targets}, {candidates}, {min_yield}")
    if loss not in TARGETED_LOSSES:
        raise UserError(f"loss must be one of {', '.join(TARGETED_LOSSES)}, got {loss!r}")
    x, eps_t, logits = _prepare(model, x, y, eps)
    x_adv = x.clone()
    broken = (logits.argmax(1) != y) | (eps_t.flatten() <= 0)
    idx = (~broken).nonzero().squeeze(1)
    if idx.numel() == 0 or logits.shape[1] < 2:
        return x_adv
    objective = dlr_targeted if loss == "dlr" and logits.shape[1] >= 4 else _targeted
    ranked = ranked_targets(model, x[idx], y[idx], norm=norm, candidates=candidates)
    targets = torch.zeros((x.shape[0], ranked.shape[1]), dtype=torch.long, device=x.device)
    targets[idx] = ranked
    ranks = min(max_targets, targets.shape[1])
    first = min(min_targets, ranks)

    def attempt(block: list[int], iterations: int) -> tuple[int, int]:
        """APGD-T on every (surviving sample, rank in ``block``) pair in one batch: (pairs run, pairs broken)."""
        alive = (~broken).nonzero().squeeze(1)
        rows = alive.repeat(len(block))
        cols = torch.tensor(block, device=x.device).repeat_interleave(alive.numel())
        x_sub, ok, _ = _apgd_attempt(model, x[rows], y[rows], targets[rows, cols], eps_t[rows], norm=norm,
                                     steps=iterations, rho=RHO, objective=objective, generator=generator)
        broken[_keep_first_success(rows, ok, x_sub, x_adv)] = True  # pairs ordered by rank: each sample's best
        return rows.numel(), int(ok.sum())

    attacked, won_total = attempt(list(range(targets.shape[1])), sweep_steps) if sweep_steps else (0, 0)
    blocks = [list(range(first))] if stack else [[r] for r in range(first)]
    blocks += [[r] for r in range(first, ranks)]
    for block in blocks:
        if (block[0] >= first and won_total < min_yield * attacked) or broken.all():
            break
        pairs, won = attempt(block, steps)
        attacked, won_total = attacked + pairs, won_total + won
    return x_adv


def square_escalating(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "linf",
    queries: int = 1000,
    near_share: float = 0.25,
    near_restarts: int = 2,
    escalate_yield: float = 0.05,
    escalated_queries: int = 5000,
    zero_fraction: float = 0.0,
    p_init: float = 0.8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Square Attack with ``queries`` queries on every sample and ``near_restarts`` more independent runs on
    the ``near_share`` of them with the highest clean margin (nearest the boundary, A³'s rule for restarts
    applied to Square), all as one batch of rows with their own draws; or, when more than
    ``zero_fraction`` of the samples have an all-zero or non-finite margin-loss input gradient (masked
    gradients), one run of ``escalated_queries`` on each. Then, when the first broke at least
    ``escalate_yield`` of the samples (the black-box member finds what the gradient members missed, a
    sign that their estimate cannot be trusted), a fresh Square with ``escalated_queries`` on all the
    samples still robust."""
    if x.shape[0] == 0:
        return x.detach().clone()
    x = x.detach()
    x_in = x.detach().requires_grad_(True)
    with torch.enable_grad():
        clean_margin = margin(model(x_in), y)
        (grad,) = torch.autograd.grad(clean_margin.sum(), x_in)
    flat = grad.flatten(1)
    masked = (~torch.isfinite(flat)).any(1) | (flat == 0).all(1)
    eps_t = per_sample(eps, x).flatten()
    n = x.shape[0]
    if masked.float().mean().item() > zero_fraction:
        rows, budget = torch.arange(n, device=x.device), escalated_queries
    else:
        near = clean_margin.detach().argsort(descending=True)[: math.ceil(near_share * n)]
        rows, budget = torch.cat([torch.arange(n, device=x.device), near.repeat(near_restarts)]), queries
    x_adv = x.clone()
    broken = _square_rows(model, x, y, eps_t, rows, x_adv, norm=norm, queries=budget, p_init=p_init,
                          generator=generator)
    if budget < escalated_queries and int(broken.sum()) >= escalate_yield * n:
        _square_rows(model, x, y, eps_t, (~broken).nonzero().squeeze(1), x_adv, norm=norm, queries=escalated_queries,
                     p_init=p_init, generator=generator)
    return x_adv


def _square_rows(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, rows: torch.Tensor, x_adv: torch.Tensor,
    **settings: Any,
) -> torch.Tensor:
    """One Square run on the samples ``rows`` (a sample listed k times gets k independent runs); writes each
    broken sample's first breaking row into ``x_adv`` and returns the (N,) mask of samples broken."""
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if rows.numel() == 0:
        return broken
    x_new = square(model, x[rows], y[rows], eps=eps[rows], **settings)
    with torch.no_grad():
        ok = model(x_new).argmax(1) != y[rows]
    won = _keep_first_success(rows, ok, x_new, x_adv)
    broken[won] = True
    return broken


def _keep_first_success(
    rows: torch.Tensor, ok: torch.Tensor, x_rows: torch.Tensor, x_adv: torch.Tensor,
) -> torch.Tensor:
    """Rows are runs on the samples ``rows`` (a sample may have several); writes each sample's first successful
    run (lowest row) from ``x_rows`` into ``x_adv`` and returns the indices of those samples."""
    hits = ok.nonzero().squeeze(1)
    first = torch.full((x_adv.shape[0],), -1, dtype=torch.long, device=x_adv.device)
    first.scatter_reduce_(0, rows[hits], hits, reduce="amin", include_self=False)
    won = (first >= 0).nonzero().squeeze(1)
    x_adv[won] = x_rows[first[won]]
    return won
