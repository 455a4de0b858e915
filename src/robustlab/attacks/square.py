"""Square Attack, L∞ (score-based black box, random search).

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial
attack via random search", ECCV 2020 (Algorithms 1 and 2).

What follows the paper: initialisation with vertical stripes of width one whose value per column and
channel is drawn uniformly from {-eps, +eps}; at iteration ``i`` a square of side
``round(sqrt(p_i * H * W))`` at a uniformly random position is set, per channel, to a uniformly random
vertex value in {-eps, +eps} (equivalently: add ±2·eps and project back); the candidate is kept when it
decreases the margin loss ``z_y - max_{k != y} z_k``; ``p_i`` starts at ``p_init`` and is halved after
iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 (the paper's schedule for 10,000
queries, counted in iterations and not rescaled to a smaller budget; AutoAttack's standard 5,000-query
Square does not rescale it either).

Decisions and deviations [ours]:

* Queries are counted per sample, the initial point included; a sample stops as soon as it is
  misclassified (its first misclassified point is returned) or its budget is spent.
* A candidate identical to the current point (the square already holds the drawn values) gets a
  uniformly random non-empty set of its channels flipped, i.e. it is drawn uniformly among the
  vertex values that change the point, so that no query is spent on a no-op candidate.
* Samples misclassified at the clean input, or with eps = 0, are returned unchanged; restarts re-run
  from a new stripe initialisation only on samples not yet broken, keeping the smallest-margin point.
* Only L∞ is implemented: the L2 variant (Algorithm 3) raises ``UserError``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustlab.attacks._common import check_norm, linf_bounds, per_sample
from robustlab.attacks.losses import margin
from robustlab.errors import UserError

__all__ = ["square", "square_fraction"]

_HALVING_ITERATIONS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, iteration: int) -> float:
    """The paper's schedule: ``p_init`` halved after each of the iterations 10, 50, ..., 8000."""
    return p_init / 2 ** sum(iteration > t for t in _HALVING_ITERATIONS)


def _draw_square(
    n: int, height: int, width: int, side: int, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """A (n, 1, H, W) boolean mask holding one ``side``×``side`` square per sample at a uniform position."""
    top = torch.randint(0, height - side + 1, (n, 1), generator=generator, device=device)
    left = torch.randint(0, width - side + 1, (n, 1), generator=generator, device=device)
    rows = torch.arange(height, device=device).view(1, -1)
    cols = torch.arange(width, device=device).view(1, -1)
    in_rows = (rows >= top) & (rows < top + side)
    in_cols = (cols >= left) & (cols < left + side)
    return (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)


def _signs(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform random values in {-1, +1}."""
    return torch.randint(0, 2, shape, generator=generator, device=device).float() * 2 - 1


def _square_attempt(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    *,
    queries: int,
    p_init: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Square Attack run on a subset; returns ``(x_out, success, best_margin)`` per sample."""
    n, channels, height, width = x.shape
    device = x.device
    lower, upper = linf_bounds(x, eps)
    x_out = x.clone()
    success = torch.zeros(n, dtype=torch.bool, device=device)
    best_margin = torch.full((n,), -math.inf, device=device)
    bits = 2 ** torch.arange(channels, device=device)

    def vertex(values: torch.Tensor, st: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.minimum(torch.maximum(st["x"] + st["eps"] * values, st["lower"]), st["upper"])

    stripes = _signs((n, channels, 1, width), device, generator).to(x.dtype)
    st = {"index": torch.arange(n, device=device), "x": x, "y": y, "eps": eps, "lower": lower, "upper": upper}
    st["x_best"] = vertex(stripes, st)
    logits = model(st["x_best"])
    st["margin_best"] = margin(logits, y)

    def retire(st: dict[str, torch.Tensor], logits: torch.Tensor, x_now: torch.Tensor) -> dict[str, torch.Tensor]:
        """Record the samples misclassified at ``x_now`` and drop them from the active state."""
        broken = logits.argmax(dim=1) != st["y"]
        if not broken.any():
            return st
        idx = st["index"][broken]
        x_out[idx] = x_now[broken]
        success[idx] = True
        best_margin[idx] = margin(logits[broken], st["y"][broken])
        return {key: value[~broken] for key, value in st.items()}

    st = retire(st, logits, st["x_best"])
    for iteration in range(1, queries):
        m = st["index"].numel()
        if m == 0:
            break
        side = round(math.sqrt(square_fraction(p_init, iteration) * height * width))
        side = min(max(side, 1), height, width)
        window = _draw_square(m, height, width, side, device, generator)
        values = _signs((m, channels, 1, 1), device, generator).to(x.dtype)
        x_new = torch.where(window, vertex(values, st), st["x_best"])
        same = (x_new == st["x_best"]).flatten(1).all(dim=1)
        if same.any():  # the square already holds these values: flip a uniform non-empty set of channels
            pick = torch.randint(1, 2**channels, (int(same.sum()), 1), generator=generator, device=device)
            flip = ((pick & bits) > 0).to(x.dtype).view(-1, channels, 1, 1)
            values[same] = values[same] * (1 - 2 * flip)
            x_new = torch.where(window, vertex(values, st), st["x_best"])

        logits = model(x_new)
        margin_new = margin(logits, st["y"])
        accept = margin_new > st["margin_best"]
        st["x_best"] = torch.where(accept.view(-1, 1, 1, 1), x_new, st["x_best"])
        st["margin_best"] = torch.where(accept, margin_new, st["margin_best"])
        st = retire(st, logits, x_new)

    x_out[st["index"]] = st["x_best"]
    best_margin[st["index"]] = st["margin_best"]
    return x_out, success, best_margin


def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "linf",
    queries: int = 5000,
    p_init: float = 0.8,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted Square Attack (Andriushchenko et al., ECCV 2020), L∞, margin loss, gradient-free.

    ``x`` must be images ``(N, C, H, W)``; ``eps`` a float or an (N,) tensor; ``queries`` the budget
    per sample and restart (initial point included); ``p_init`` the initial fraction of pixels changed
    per square. Returns ``x_adv`` (detached, inside the eps-ball and [0, 1]): per sample the first
    misclassified point, else the point with the smallest margin loss. Only forward passes, under
    ``torch.no_grad()``; the model's mode is not changed.
    """
    norm = check_norm(norm)
    if norm != "linf":
        raise UserError("square supports norm linf only")
    if x.ndim != 4:
        raise UserError(f"square needs image inputs of shape (N, C, H, W), got shape {tuple(x.shape)}")
    if queries < 1:
        raise UserError(f"queries must be >= 1, got {queries}")
    if restarts < 1:
        raise UserError(f"restarts must be >= 1, got {restarts}")
    if not 0.0 < p_init <= 1.0:
        raise UserError(f"p_init must be in (0, 1], got {p_init}")
    eps_t = per_sample(eps, x)
    if (eps_t < 0).any():
        raise UserError("eps must be >= 0")
    x = x.detach()
    with torch.no_grad():
        x_adv = x.clone()
        broken = (model(x).argmax(dim=1) != y) | (eps_t.flatten() <= 0)  # nothing to search when eps = 0
        best = torch.full((x.shape[0],), -math.inf, device=x.device)
        for _ in range(restarts):
            idx = (~broken).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x_sub, ok, margin_sub = _square_attempt(
                model, x[idx], y[idx], eps_t[idx], queries=queries, p_init=p_init, generator=generator
            )
            take = ok | (margin_sub > best[idx])
            x_adv[idx[take]] = x_sub[take]
            best[idx[take]] = margin_sub[take]
            broken[idx[ok]] = True
    return x_adv
