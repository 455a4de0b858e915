"""The stop rules and documented choices of the ``fast`` protocol's members, and APGD's condition-1 threshold
(issue 33, item 8).

Each member runs with the protocol's own settings (``robustlab.evaluate.fast.FAST_PARTS``) on planted models
whose outcome is known, and each rule is tried on both sides of its boundary with the documented numbers
written here (EVALUATION.md "`fast` and `--verify K`" and the docstrings of ``robustlab.attacks.fast``), never
read from the code: ``benchmarks/mutants.py`` moves each threshold 10x each way and reverses each choice
(mutants ``thr_fast_*``, ``fast_*``, ``thr_apgd_rho_*``) and runs this file. Where only the bookkeeping of a
member is under test (which samples it attacks, how many rounds, which budget), the attack it delegates to
(APGD-T's attempt, Square) is replaced by a planted one, so the file runs in seconds.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import pytest
import torch
from torch import nn

from robustlab.attacks import fast as fast_attacks
from robustlab.attacks._common import per_sample
from robustlab.attacks.apgd import apgd
from robustlab.attacks.fast import cosine_sizes, margin_restarts, ranked_targeted, ranked_targets, square_escalating
from robustlab.evaluate.fast import FAST_PARTS

MARGIN = FAST_PARTS["fast-margin"][1]
TARGETED = FAST_PARTS["fast-targeted"][1]
SQUARE = FAST_PARTS["fast-square"][1]
ID_STEP = 1 / 64  # sample i holds (i + 1) * ID_STEP in pixel 0; attacks that move it must keep eps < ID_STEP / 2


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _ids(x: torch.Tensor) -> list[int]:
    """The sample numbers written in pixel 0 of a batch of :class:`Lineup` inputs."""
    return ((x[:, 0, 0, 0] / ID_STEP).round().long() - 1).tolist()


class Lineup(nn.Module):
    """Samples told apart by pixel 0, label 0, planted clean margins and class order.

    For sample ``i`` the other classes' logits are ``margins[i] - j`` for the ``j``-th class of ``order[i]``
    (largest first), and the label's is ``-slopes[i] * (pixel 1 - 1/2)``: the margin loss
    ``max_{k != 0} z_k - z_0`` is ``margins[i] + slopes[i] * (pixel 1 - 1/2)``, with input gradient ``slopes[i]``
    on pixel 1 (zero where the slope is 0: a masked sample). Images are ``(1, 1, 2)``: pixel 1 is 1/2 clean.
    """

    def __init__(self, margins: list[float], order: list[list[int]] | None = None,
                 slopes: list[float] | None = None) -> None:
        super().__init__()
        n = len(margins)
        order = order or [[1]] * n
        self.num_classes = len(order[0]) + 1
        table = torch.zeros(n, self.num_classes)
        for i, classes in enumerate(order):
            for j, k in enumerate(classes):
                table[i, k] = margins[i] - j
        self.table = table
        self.slopes = torch.tensor(slopes if slopes is not None else [1.0] * n)

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean batch and its labels."""
        n = self.table.shape[0]
        x = torch.full((n, 1, 1, 2), 0.5)
        x[:, 0, 0, 0] = (torch.arange(n) + 1) * ID_STEP
        return x, torch.zeros(n, dtype=torch.long)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = torch.tensor(_ids(x))
        z = self.table[i].clone()
        z[:, 0] = -self.slopes[i] * (x[:, 0, 0, 1] - 0.5)
        return z


def _spy(monkeypatch: pytest.MonkeyPatch, name: str, record: Callable[..., Any]) -> None:
    """Replace ``robustlab.attacks.fast.<name>`` by a wrapper that calls ``record`` with its arguments first."""
    original = getattr(fast_attacks, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        record(*args, **kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(fast_attacks, name, wrapper)


# --- fast-margin: which survivors get the restarts, and towards which class -------------------------------------

MARGINS = [-0.5, -0.9, -0.2, -0.7, -0.3, -0.8, -0.4, -0.6]  # never broken at eps 0.005


def test_margin_restarts_attack_the_shrinking_share_nearest_the_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    """EVALUATION.md (``fast``, 1): 20 iterations, then 3 restarts on 75%, 56% and 42% of the survivors nearest
    the boundary (``keep`` 0.75 to the power r, rounded up; the highest best margin first): of 8 survivors 6, 5,
    then 4, always those with the highest margins."""
    passes: list[list[int]] = []
    _spy(monkeypatch, "_descend", lambda model, ball, *a, **k: passes.append(_ids(ball.x)))
    model = Lineup(MARGINS)
    margin_restarts(model, *model.images(), eps=0.005, generator=_generator(), **MARGIN)
    assert [len(p) for p in passes] == [8, 6, 5, 4]  # ceil(8 * 0.75 ** r)
    nearest = sorted(range(8), key=lambda i: MARGINS[i], reverse=True)
    assert [sorted(p) for p in passes[1:]] == [sorted(nearest[:k]) for k in (6, 5, 4)]


def test_each_restart_starts_towards_the_next_ranked_clean_logit(monkeypatch: pytest.MonkeyPatch) -> None:
    """EVALUATION.md (``fast``, 1) and ``margin_restarts``: restart r starts from A³'s diversified start towards
    the r-th largest other clean logit of each sample."""
    order = [[1, 2, 3, 4], [4, 3, 2, 1], [2, 4, 1, 3], [3, 1, 4, 2]]
    seen: list[tuple[list[int], list[int]]] = []
    _spy(monkeypatch, "_diversified_start",
         lambda model, ball, y, target, **k: seen.append((_ids(ball.x), target.tolist())))
    model = Lineup([-0.5, -0.6, -0.7, -0.8], order)
    margin_restarts(model, *model.images(), eps=0.005, generator=_generator(), **MARGIN)
    assert len(seen) == 3
    for r, (ids, targets) in enumerate(seen, start=1):
        assert targets == [order[i][r - 1] for i in ids], r


class LogitGradients(nn.Module):
    """A linear model that records the gradient reaching its logits: under the ODI loss ``w . z``, ``w`` itself."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.weight = torch.randn(2, num_classes, generator=_generator())
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.weight
        if z.requires_grad:
            z.register_hook(lambda g: self.seen.append(g.detach().clone()))
        return z


def test_diversified_start_weights_follow_a3() -> None:
    """The ODI weights of A³'s diversified start (``robustlab.attacks.fast``: ``w ~ U(-1, 1)^K``,
    ``w_y = (K/10) U(-0.1, 0.5)``, ``w_t = 0.8 K/10``), read as the gradient reaching the logits; K = 20, so the
    K/10 scale is 2, over 300 samples (the label's weight spans its range)."""
    k, n = 20, 300
    model = LogitGradients(k)
    x = torch.rand(n, 1, 1, 2, generator=_generator()) * 0.5 + 0.25
    y, target = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)
    ball = fast_attacks._Ball(x, per_sample(0.01, x), "linf")
    fast_attacks._diversified_start(model, ball, y, target, num_classes=k, steps=1, generator=_generator())
    (w,) = model.seen
    assert w[:, 1] == pytest.approx(torch.full((n,), 0.8 * 2), abs=1e-6)
    label = w[:, 0] / 2
    assert label.min() >= -0.1 - 1e-6 and label.max() <= 0.5 + 1e-6
    assert label.min() < -0.08 and label.max() > 0.48
    assert w[:, 2:].abs().max() <= 1


# --- fast-margin: the stop rules (stall, cycle) and the cosine steps ---------------------------------------------


class _PlantedGradient(torch.autograd.Function):
    """Zero in the forward; ``sign`` times ones as the input gradient in the backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sign: float) -> torch.Tensor:
        ctx.shape, ctx.sign = x.shape, sign
        return x.new_zeros(x.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.view(-1, *([1] * (len(ctx.shape) - 1))) * ctx.sign * torch.ones(ctx.shape), None


class Scripted(nn.Module):
    """Two classes, label 0: the margin loss at the c-th forward is ``losses[c]`` (the last one repeated), and
    its input gradient is ``+1`` on odd forwards and ``-1`` on even ones (``alternate``; else 0), whatever the
    input. With alternating signs the iterate swings with the shrinking cosine steps and never repeats a point;
    with none it stays put: a cycle."""

    def __init__(self, losses: list[float], alternate: bool = True) -> None:
        super().__init__()
        self.losses, self.alternate, self.calls = losses, alternate, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.calls
        self.calls += 1
        sign = (1.0 if c % 2 else -1.0) if self.alternate else 0.0
        z1 = self.losses[min(c, len(self.losses) - 1)] + _PlantedGradient.apply(x, sign)
        return torch.stack([torch.zeros_like(z1), z1], 1)


def _iterations(model: Scripted) -> int:
    """Iterations of fast-margin's first pass alone (no restarts), counted as its forwards less the clean one and
    the start's."""
    x = torch.full((1, 1, 2, 2), 0.5)
    margin_restarts(model, x, torch.zeros(1, dtype=torch.long), eps=0.1, generator=_generator(),
                    **{**MARGIN, "restarts": 1})
    return model.calls - 2


@pytest.mark.parametrize("rise_at, iterations", [(None, 10), (9, 19)])
def test_margin_member_stops_a_sample_after_ten_iterations_without_progress(rise_at: int | None,
                                                                            iterations: int) -> None:
    """EVALUATION.md (``fast``): the margin member stops a sample "whose best loss has not risen for 10
    iterations" (``patience`` 10): a loss that only falls stops after 10 iterations; one that rises at the 9th
    runs 10 more after it (19; the budget is 20)."""
    losses = [-5.0, -5.0] + [-5.0 - 0.01 * k for k in range(1, 30)]  # forwards: clean, start, iterations 1, 2, ...
    if rise_at is not None:
        losses[rise_at + 1] = -1.0
    assert _iterations(Scripted(losses)) == iterations


def test_margin_member_stops_a_cycling_sample_at_once() -> None:
    """EVALUATION.md (``fast``): the margin member stops a sample "whose iterate cycles": with no gradient the
    first step returns to the start, and the sample stops after 1 iteration instead of stalling for 10."""
    assert _iterations(Scripted([-1.0], alternate=False)) == 1


def test_cosine_steps_end_at_a_tenth_of_eps_within_ten_iterations_else_a_thousandth() -> None:
    """A³'s step sizes (``cosine_sizes``): ``lo + (1 - lo)(1 + cos(pi s / (N + 1))) / 2`` of eps, ``lo`` 0.1 for
    budgets of at most 10 iterations and 0.001 for longer ones."""
    def schedule(n: int, low: float) -> list[float]:
        return [low + (1 - low) * (1 + math.cos(math.pi * s / (n + 1))) / 2 for s in range(n)]

    assert cosine_sizes(10) == pytest.approx(schedule(10, 0.1), abs=1e-12)
    assert cosine_sizes(11) == pytest.approx(schedule(11, 0.001), abs=1e-12)
    assert cosine_sizes(20) == pytest.approx(schedule(20, 0.001), abs=1e-12)


# --- fast-targeted: MALT's ranking and the yield rule -----------------------------------------------------------


class Malt(nn.Module):
    """Label 0, one pixel per class: ``z_k = -k + k^3 (x_k - 1/2)``. At the clean input (all 1/2) the largest other
    logit is class 1, but MALT's distance ``k / k^3`` puts class K-1 first: the two orders are reversed."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        k = torch.arange(num_classes, dtype=torch.float32)
        self.bias, self.slope = -k, k ** 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias + self.slope * (x.flatten(1) - 0.5)


def _malt_batch(n: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n, 1, 1, num_classes), 0.5), torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_targets_are_ranked_by_linearised_distance_smallest_first(norm: str) -> None:
    """EVALUATION.md (``fast``, 2): the targets ranked by MALT's linearised distance, smallest first, not by
    their clean logits."""
    ranked = ranked_targets(Malt(4), *_malt_batch(3, 4), norm=norm, candidates=3)
    assert ranked.tolist() == [[3, 2, 1]] * 3


class PlantedAttempts:
    """Stands in for APGD-T's attempt inside ``ranked_targeted``: breaks the first ``sweep_breaks`` rows of the
    first call (the sweep; its first rows are distinct samples) and nothing after; records each call's rows,
    iterations and targets."""

    def __init__(self, sweep_breaks: int) -> None:
        self.sweep_breaks = sweep_breaks
        self.calls: list[tuple[int, int, list[int]]] = []

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, eps: torch.Tensor,
                 *, steps: int, **_: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ok = torch.zeros(x.shape[0], dtype=torch.bool)
        if not self.calls:
            ok[: self.sweep_breaks] = True
        self.calls.append((x.shape[0], steps, target.tolist()))
        return x.clone(), ok, torch.zeros(x.shape[0], dtype=torch.float64)


@pytest.mark.parametrize("sweep_breaks, ranks", [(0, 2), (10, 2), (11, 3), (20, 9)])
def test_targeted_member_adds_ranks_while_they_break_one_percent(
    monkeypatch: pytest.MonkeyPatch, sweep_breaks: int, ranks: int,
) -> None:
    """EVALUATION.md (``fast``, 2): a 5-iteration sweep of every candidate target, then 50 iterations per target
    in MALT's order: the first 2 ranks, then one more while the sweep and the ranks so far broke at least 1% of
    the runs they made, up to 9. On 100 samples and 10 classes the sweep makes 900 runs: 10 breaks and two
    ranks of 90 make 10 of 1,080 (below 1%: stop), 11 make 11 of 1,078 (a third rank), 20 pay for all 9."""
    attempts = PlantedAttempts(sweep_breaks)
    monkeypatch.setattr(fast_attacks, "_apgd_attempt", attempts)
    ranked_targeted(Malt(10), *_malt_batch(100, 10), eps=0.05, generator=_generator(), **TARGETED)
    sweep, *rounds = attempts.calls
    assert sweep[:2] == (900, 5)
    assert [(rows, steps) for rows, steps, _ in rounds] == [(100 - sweep_breaks, 50)] * ranks
    assert [set(targets) for _, _, targets in rounds] == [{9 - r} for r in range(ranks)]  # MALT's rank r


# --- fast-square: which samples get the extra runs, and when the budget grows -----------------------------------


class PlantedSquare:
    """Stands in for Square inside ``square_escalating``: moves pixel 1 by +eps on the rows of the samples in
    ``breaks`` (enough to misclassify them on a :class:`Lineup` of slope 20) and leaves the others; records
    each call's sample numbers and query budget."""

    def __init__(self, breaks: set[int]) -> None:
        self.breaks = breaks
        self.calls: list[tuple[list[int], int]] = []

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: torch.Tensor, queries: int,
                 **_: Any) -> torch.Tensor:
        ids = _ids(x)
        self.calls.append((ids, queries))
        out = x.clone()
        hit = torch.tensor([i in self.breaks for i in ids])
        out[hit, 0, 0, 1] += eps[hit]
        return out


def _square(monkeypatch: pytest.MonkeyPatch, n: int, breaks: Iterable[int] = (),
            masked: Iterable[int] = ()) -> list[tuple[list[int], int]]:
    """``square_escalating`` with the protocol's settings on ``n`` :class:`Lineup` samples (margins rising with
    the sample number; slope 0 for the ``masked`` ones); the planted Square's calls."""
    planted, dead = PlantedSquare(set(breaks)), set(masked)
    monkeypatch.setattr(fast_attacks, "square", planted)
    model = Lineup([-0.9 + 0.7 * i / (n - 1) for i in range(n)], slopes=[0.0 if i in dead else 20.0 for i in range(n)])
    square_escalating(model, *model.images(), eps=0.05, generator=_generator(), **SQUARE)
    return planted.calls


def test_square_runs_twice_more_on_the_half_nearest_the_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    """EVALUATION.md (``fast``, 3): Square with 1,000 queries on the survivors and 2 more independent runs on the
    half of them nearest the boundary (the highest clean margin), in one batch."""
    (call,) = _square(monkeypatch, 8)
    ids, queries = call
    assert queries == 1000
    assert {i: ids.count(i) for i in range(8)} == {i: 1 if i < 4 else 3 for i in range(8)}


@pytest.mark.parametrize("masked, rows, queries", [(set(), 80, 1000), ({7}, 40, 5000)], ids=["none", "one"])
def test_square_spends_the_standard_budget_when_any_gradient_vanishes(
    monkeypatch: pytest.MonkeyPatch, masked: set[int], rows: int, queries: int,
) -> None:
    """EVALUATION.md (``fast``, 3): 5,000 queries on each survivor instead "when any survivor's gradient is zero
    or not finite" (``zero_fraction`` 0: one masked sample of 40 is enough; none keeps the cheap batch)."""
    (call,) = _square(monkeypatch, 40, masked=masked)
    assert (len(call[0]), call[1]) == (rows, queries)


@pytest.mark.parametrize("broken, escalated", [(1, False), (2, True)])
def test_square_escalates_when_it_broke_five_percent(
    monkeypatch: pytest.MonkeyPatch, broken: int, escalated: bool,
) -> None:
    """EVALUATION.md (``fast``, 3): "when it broke at least 5% of its samples ..., 5,000 queries on the rest":
    2 of 40 (5%) escalate, 1 (2.5%) does not."""
    calls = _square(monkeypatch, 40, breaks=set(range(broken)))
    assert [q for _, q in calls] == ([1000, 5000] if escalated else [1000])
    if escalated:
        assert sorted(calls[1][0]) == list(range(broken, 40))


# --- APGD's condition 1 (apgd.RHO), which fast-targeted's attempts share ----------------------------------------


class ScriptedLoss(nn.Module):
    """One pixel, two classes, label 0 far ahead: logit 1 is ``losses[c]`` at the c-th forward plus the pixel
    (input gradient +1 always); records each forward's input."""

    def __init__(self, losses: list[float]) -> None:
        super().__init__()
        self.losses = losses
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        loss = self.losses[min(len(self.inputs), len(self.losses) - 1)]
        self.inputs.append(x.detach().clone())
        z1 = loss + x.flatten(1).sum(1)
        return torch.stack([torch.full_like(z1, 1e4), z1], 1)


@pytest.mark.parametrize("window_losses, halved", [([1, 2, 3, 2], True), ([1, 2, 3, 4], False)],
                         ids=["3-of-4-rose", "4-of-4-rose"])
def test_apgd_halves_the_step_when_at_most_three_quarters_of_the_steps_rose(window_losses: list[float],
                                                                             halved: bool) -> None:
    """apgd.RHO (Croce & Hein 2020, condition 1: at most ``rho`` = 0.75 of the window's loss changes were
    increases, ``<=``): with 20 iterations the first checkpoint closes a window of 4 steps; 3 increases (0.75)
    halve the step and return to the best point (here the start, whose loss is highest), 4 do not (the iterate
    stays on the ball's edge, where the constant gradient drove it)."""
    model = ScriptedLoss([0.0, 1000.0, *window_losses, 0.0])  # forwards: clean, start, iterations 1-4, ...
    x = torch.full((1, 1, 1, 1), 0.5)
    apgd(model, x, torch.zeros(1, dtype=torch.long), eps=0.25, steps=20, loss=lambda z, y: z[:, 1],
         generator=_generator())
    start, fifth = float(model.inputs[1]), float(model.inputs[6])
    assert start < 0.75
    assert (fifth < 0.75 - 1e-3) is halved  # 0.75: the ball's upper edge
