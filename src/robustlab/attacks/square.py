"""Square Attack, L∞ and L2 (score-based black box, random search).

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial
attack via random search", ECCV 2020 (Algorithm 1 with the L∞ sampler of Algorithm 2 and the L2
sampler of Algorithm 3); schedules, ranges and the L2 update as in the authors' AutoAttack code.

L∞: initialisation with vertical stripes of width one whose value per column and channel is drawn
uniformly from {-eps, +eps}; at iteration ``i`` a square of side ``round(sqrt(p_i * H * W))`` is set,
per channel, to a random vertex value in {-eps, +eps} (add ±2·eps and project back).

L2: initialisation with a grid of ``H//5``-sized tiles, each holding the centred-square pattern
``eta`` (two opposite-signed halves whose entries decay as ``Σ_{k>=r} 1/(k+1)^2`` with the distance
``r`` from each half's centre) times a random sign per channel, rescaled to norm eps. An iteration draws
two windows of odd side ``s >= 3``: the second is emptied and the first receives ``eta`` with a random
sign per channel plus its own normalised old content, rescaled per channel so that the budget
``sqrt(max(eps^2 - ‖δ‖^2, 0)/C + ‖δ on both windows‖^2)`` is used; the whole ``δ`` is then rescaled
to norm eps (the reference's per-iteration projection) and the point clipped to [0, 1].

Both: margin loss ``z_y - max_{k != y} z_k``, a candidate is kept when it lowers it; ``p_i`` starts at
``p_init`` and halves after the reference's loop counter (``i - 1`` here) passes 10, 50, 200, 500,
1000, 2000, 4000, 6000, 8000; with ``rescale_schedule=True`` the counter is first rescaled to a
10,000-query budget, ``int((i - 1) / queries * 10000)``, as the reference's ``SquareAttack`` does by
default. AutoAttack's standard Square sets ``resc_schedule=False``, hence our default.

Modes. ``mode="strong"`` (default) is stronger than the reference on small images: each sample draws
its own square positions, signs and (L2) pattern orientations, positions range over every row and column
(the reference draws a corner in ``[0, H - s)``, so the last row and column are never changed
once squares are smaller than the image), and (L∞) a candidate identical to the current point gets a uniform non-empty
set of channels flipped, so no query is spent on a no-op. ``mode="reference"`` shares one position pair and
(L∞) one sign pattern per iteration across the batch, uses the reference's ranges and no-op candidates,
and draws its random numbers in the reference's order, so published Square numbers can be compared.

Decisions and deviations [ours]:

* ``queries`` counts forward passes per sample, the initial point included: ``queries=5000`` runs 4999
  candidates where the reference runs 5000 after its initial point.
* A sample stops as soon as it is misclassified (its first misclassified point is returned) or its
  budget is spent. Broken samples leave the batch (``compact=True``); the random draws are made per
  sample of the whole run, so the verdicts do not depend on compaction.
* Samples misclassified at the clean input, or with eps = 0, are returned unchanged; restarts re-run
  from a new initialisation only on samples not yet broken, keeping the smallest-margin point.
* L2 on images smaller than 5 pixels (the reference divides by ``H // 5 = 0``): tiles of side 1.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import nn

from robustlab.attacks._common import check_norm, flat_norm, linf_bounds, per_sample
from robustlab.attacks.losses import margin
from robustlab.errors import UserError

__all__ = ["square", "square_fraction", "MODES"]

MODES = ("strong", "reference")
_HALVING_ITERATIONS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, iteration: int, queries: int | None = None) -> float:
    """``p`` at candidate ``iteration`` (1-based): the reference's schedule on its loop counter
    ``iteration - 1``, rescaled to 10,000 queries when ``queries`` is given."""
    counter = iteration - 1
    if queries is not None:
        counter = int(counter / queries * 10000)
    return p_init / 2 ** sum(counter > t for t in _HALVING_ITERATIONS)


class _Draws:
    """The random choices of one run, returned for the rows ``active`` (indices into the run's batch).

    ``strong``: one draw per sample of the run (so a sample's draws do not depend on which others are
    still active). ``reference``: shared draws where the reference shares them, in its order and ranges.
    """

    def __init__(self, mode: str, n: int, device: torch.device, generator: torch.Generator | None) -> None:
        self.shared = mode == "reference"
        self.n, self.device, self.generator = n, device, generator

    def _uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device)

    def _rows(self, active: torch.Tensor, *shape: int) -> torch.Tensor:
        if self.shared:
            return self._uniform(1, *shape).expand(active.numel(), *shape)
        return self._uniform(self.n, *shape)[active]

    def position(self, active: torch.Tensor, limit: int) -> torch.Tensor:
        """(m, 1) corners: uniform in [0, limit] (strong) or the reference's [0, limit) and 0 if limit = 0."""
        span = limit if self.shared else limit + 1
        return (self._rows(active, 1) * span).long()

    def signs(self, active: torch.Tensor, channels: int, per_sample: bool = False) -> torch.Tensor:
        """(m, C, 1, 1) values in {-1, +1}; ``per_sample`` also in reference mode (as its L2 draws)."""
        if self.shared and per_sample:
            u = self._uniform(active.numel(), channels, 1, 1)
        else:
            u = self._rows(active, channels, 1, 1)
        return torch.where(u < 0.5, -1.0, 1.0)

    def flag(self, active: torch.Tensor) -> torch.Tensor:
        """(m, 1, 1, 1) fair coin (the reference transposes ``eta`` when its draw exceeds 1/2)."""
        return self._rows(active, 1, 1, 1) > 0.5

    def linf_square(
        self, active: torch.Tensor, channels: int, rows: int, cols: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(top, left, signs, flips)`` of one L∞ candidate: corners in ``[0, rows]``/``[0, cols]`` (the
        reference's ranges in reference mode), (m, C, 1, 1) signs in {-1, +1}, and (strong mode only) a
        uniform non-empty set of channels as a 0/1 mask. Strong mode takes all of them from one draw."""
        if self.shared:
            return self.position(active, rows), self.position(active, cols), self.signs(active, channels), None
        u = self._uniform(self.n, channels + 3)[active]
        top = (u[:, :1] * (rows + 1)).long()
        left = (u[:, 1:2] * (cols + 1)).long()
        signs = torch.where(u[:, 2:2 + channels] < 0.5, -1.0, 1.0).view(-1, channels, 1, 1)
        pick = (u[:, -1:] * (2**channels - 1)).long() + 1  # uniform in 1 .. 2^C - 1
        bits = 2 ** torch.arange(channels, device=self.device)
        return top, left, signs, ((pick & bits) > 0).float().view(-1, channels, 1, 1)


def _window(top: torch.Tensor, left: torch.Tensor, side: int, height: int, width: int) -> torch.Tensor:
    """(m, 1, H, W) boolean masks of one ``side``×``side`` square per row at ``(top, left)`` ((m, 1) each)."""
    rows = torch.arange(height, device=top.device).view(1, -1)
    cols = torch.arange(width, device=top.device).view(1, -1)
    in_rows = (rows >= top) & (rows < top + side)
    in_cols = (cols >= left) & (cols < left + side)
    return (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)


def _place(pattern: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(m, 1, H, W) canvas holding the (m, 1, s, s) ``pattern`` at ``(top, left)``, zero elsewhere;
    rows or columns falling outside the image are dropped."""
    m, side = pattern.shape[0], pattern.shape[-1]
    padded = torch.zeros(m, 1, height + side, width + side, dtype=pattern.dtype, device=pattern.device)
    offsets = torch.arange(side, device=top.device)
    r = (top + offsets).view(m, side, 1)
    c = (left + offsets).view(m, 1, side)
    padded[torch.arange(m, device=top.device).view(m, 1, 1), 0, r, c] = pattern[:, 0]
    return padded[:, :, :height, :width]


def _rectangle(rows: int, cols: int) -> torch.Tensor:
    """A ``rows``×``cols`` block decaying from its centre ``(rows//2, cols//2)``: entry at Chebyshev distance
    ``r`` is ``Σ_{k=r}^{K-1} 1/(k+1)^2``, ``K = max(rows, cols)//2 + 1``; unit L2 norm (empty if rows = 0)."""
    k_max = max(rows // 2, cols // 2) + 1
    i = (torch.arange(rows) - rows // 2).abs().view(-1, 1)
    j = (torch.arange(cols) - cols // 2).abs().view(1, -1)
    tail = (1.0 / torch.arange(1, k_max + 1, dtype=torch.float64) ** 2).flip(0).cumsum(0).flip(0)
    block = tail[torch.maximum(i, j).clamp_max(k_max - 1)]
    return (block / block.norm().clamp_min(1e-12)).float()


@functools.lru_cache(maxsize=None)
def _eta(side: int, device: torch.device) -> torch.Tensor:
    """The L2 square pattern of side ``side``: a positive top half and a negative bottom half, unit norm."""
    top = side // 2
    pattern = torch.cat([_rectangle(top, side), -_rectangle(side - top, side)])
    return (pattern / pattern.norm()).to(device)


def _oriented_eta(side: int, transpose: torch.Tensor) -> torch.Tensor:
    """(m, 1, s, s): ``eta`` transposed where ``transpose`` ((m, 1, 1, 1) bool) holds."""
    eta = _eta(side, transpose.device)
    return torch.where(transpose, eta.t(), eta)


def _channel_norm(v: torch.Tensor) -> torch.Tensor:
    """(N, C, 1, 1) L2 norm over the spatial dimensions."""
    return v.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()


def _rescale_l2(x: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``clip(x + eps·δ/‖δ‖, 0, 1)``: the reference's per-iteration L2 projection (onto the sphere)."""
    return (x + delta / (flat_norm(delta) + 1e-12) * eps).clamp(0.0, 1.0)


def _init_linf(x: torch.Tensor, eps: torch.Tensor, draws: _Draws, active: torch.Tensor) -> torch.Tensor:
    """Vertical stripes: one value in {-eps, +eps} per sample, channel and column."""
    n, channels, _, width = x.shape
    u = torch.rand((n, channels, 1, width), generator=draws.generator, device=x.device)
    stripes = torch.where(u < 0.5, -1.0, 1.0).to(x.dtype)
    lower, upper = linf_bounds(x, eps)
    return torch.minimum(torch.maximum(x + eps * stripes, lower), upper)


def _init_l2(x: torch.Tensor, eps: torch.Tensor, draws: _Draws, active: torch.Tensor) -> torch.Tensor:
    """A grid of ``eta`` tiles of side ``H//5`` with a random sign per sample and channel, norm eps."""
    n, channels, height, width = x.shape
    side = max(height // 5, 1)
    start = max((height - 5 * side) // 2, 0)
    delta = torch.zeros_like(x)
    for row in range(height // side):
        for col in range(width // side):
            eta = _oriented_eta(side, draws.flag(active))
            signs = draws.signs(active, channels, per_sample=True)
            top, left = start + row * side, start + col * side
            if top < height and left < width:  # the reference also draws for tiles past the border
                corner = torch.full((n, 1), top, device=x.device), torch.full((n, 1), left, device=x.device)
                delta = delta + _place(eta, *corner, height, width) * signs
    return _rescale_l2(x, delta, eps)


def _step_linf(
    x: torch.Tensor, x_best: torch.Tensor, eps: torch.Tensor, draws: _Draws, active: torch.Tensor, p: float,
    bounds: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """One L∞ candidate per row: a square set to a vertex value per channel (``bounds``: the rows' box)."""
    _, channels, height, width = x.shape
    side = min(max(round(math.sqrt(p * height * width)), 1), height, width)
    top, left, signs, flips = draws.linf_square(active, channels, height - side, width - side)
    window = _window(top, left, side, height, width)
    lower, upper = bounds
    vertex = torch.where(signs > 0, upper, lower)
    if flips is not None:  # where the square already holds these values, flip a non-empty set of channels
        same = torch.where(window, vertex == x_best, True).flatten(1).all(dim=1).view(-1, 1, 1, 1)
        vertex = torch.where(same & (flips > 0), torch.where(signs > 0, lower, upper), vertex)
    return torch.where(window, vertex, x_best)


def _step_l2(
    x: torch.Tensor, x_best: torch.Tensor, eps: torch.Tensor, draws: _Draws, active: torch.Tensor, p: float,
    bounds: None = None,
) -> torch.Tensor:
    """One L2 candidate per row (Algorithm 3 as in the reference): refill one window, empty another."""
    _, channels, height, width = x.shape
    side = max(round(math.sqrt(p * height * width)), 3)
    side = min(side + 1 - side % 2, height, width)
    top1, left1 = draws.position(active, height - side), draws.position(active, width - side)
    top2, left2 = draws.position(active, height - side), draws.position(active, width - side)
    first = _window(top1, left1, side, height, width)
    both = first | _window(top2, left2, side, height, width)
    delta = x_best - x
    budget = (torch.clamp_min(eps**2 - flat_norm(delta) ** 2, 0.0) / channels + _channel_norm(delta * both) ** 2).sqrt()
    eta = _place(_oriented_eta(side, draws.flag(active)), top1, left1, height, width)
    old = delta * first
    new = eta * draws.signs(active, channels, per_sample=True) + old / (_channel_norm(old) + 1e-12)
    new = new / (_channel_norm(new) + 1e-12) * budget
    delta = torch.where(first, new, torch.where(both, 0.0, delta))
    return _rescale_l2(x, delta, eps)


_Init = Callable[[torch.Tensor, torch.Tensor, _Draws, torch.Tensor], torch.Tensor]
_Step = Callable[..., torch.Tensor]
_SAMPLERS: dict[str, tuple[_Init, _Step]] = {"linf": (_init_linf, _step_linf), "l2": (_init_l2, _step_l2)}


def _square_attempt(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    *,
    norm: str,
    queries: int,
    p_init: float,
    mode: str,
    rescale_schedule: bool,
    compact: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Square Attack run on a subset; returns ``(x_best, success, best_margin)`` per sample."""
    init, step = _SAMPLERS[norm]
    draws = _Draws(mode, x.shape[0], x.device, generator)
    active = torch.arange(x.shape[0], device=x.device)
    x_best = init(x, eps, draws, active)
    logits = model(x_best)
    best_margin = margin(logits, y)
    success = logits.argmax(dim=1) != y
    active = active[~success]
    # the active rows' working copies, gathered again only when rows leave (a break): most iterations
    # of a robust sample then touch no index
    xa, ba, ea, ya, ma = x[active], x_best[active], eps[active], y[active], best_margin[active]
    bounds = linf_bounds(xa, ea) if norm == "linf" else None
    for iteration in range(1, queries):
        if active.numel() == 0:
            break
        p = square_fraction(p_init, iteration, queries if rescale_schedule else None)
        x_new = step(xa, ba, ea, draws, active, p, bounds)
        if compact:
            logits = model(x_new)
        else:  # the whole batch, as without compaction; only the active rows are read
            everything = x_best.clone()
            everything[active] = x_new
            logits = model(everything)[active]
        margin_new = margin(logits, ya)
        broke = logits.argmax(dim=1) != ya
        take = broke | (margin_new > ma)
        ba = torch.where(take.view(-1, 1, 1, 1), x_new, ba)
        ma = torch.where(take, margin_new, ma)
        if broke.any():
            x_best[active], best_margin[active] = ba, ma
            success[active[broke]] = True
            keep = ~broke
            active, xa, ba, ea, ya, ma = active[keep], xa[keep], ba[keep], ea[keep], ya[keep], ma[keep]
            bounds = None if bounds is None else (bounds[0][keep], bounds[1][keep])
    x_best[active], best_margin[active] = ba, ma
    return x_best, success, best_margin


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
    mode: str = "strong",
    rescale_schedule: bool = False,
    compact: bool = True,
) -> torch.Tensor:
    """Untargeted Square Attack (Andriushchenko et al., ECCV 2020), L∞ or L2, margin loss, gradient-free.

    ``x`` must be images ``(N, C, H, W)``; ``eps`` a float or an (N,) tensor; ``queries`` the budget
    per sample and restart (initial point included); ``p_init`` the initial fraction of pixels changed
    per square; ``mode`` ``"strong"`` or ``"reference"`` and ``rescale_schedule`` as in the module
    docstring; ``compact=False`` forwards the whole batch at every iteration (for measurements; same
    result). Returns ``x_adv`` (detached, inside the eps-ball and [0, 1]): per sample the first
    misclassified point, else the point with the smallest margin loss. Only forward passes, under
    ``torch.no_grad()``; the model's mode is not changed.
    """
    norm = check_norm(norm)
    if x.ndim != 4:
        raise UserError(f"square needs image inputs of shape (N, C, H, W), got shape {tuple(x.shape)}")
    if queries < 1:
        raise UserError(f"queries must be >= 1, got {queries}")
    if restarts < 1:
        raise UserError(f"restarts must be >= 1, got {restarts}")
    if not 0.0 < p_init <= 1.0:
        raise UserError(f"p_init must be in (0, 1], got {p_init}")
    if mode not in MODES:
        raise UserError(f"square mode must be one of {', '.join(MODES)}, got {mode!r}")
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
                model, x[idx], y[idx], eps_t[idx], norm=norm, queries=queries, p_init=p_init, mode=mode,
                rescale_schedule=rescale_schedule, compact=compact, generator=generator,
            )
            take = ok | (margin_sub > best[idx])
            x_adv[idx[take]] = x_sub[take]
            best[idx[take]] = margin_sub[take]
            broken[idx[ok]] = True
    return x_adv
