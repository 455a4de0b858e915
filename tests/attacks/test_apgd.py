"""APGD and APGD-T (Croce & Hein 2020) against linear models with a known optimum, plus the contract."""

from __future__ import annotations

import functools
import sys

import pytest
import torch
from torch import nn
from toy_models import LinearClassifier, interior_inputs

from robustlab.attacks.apgd import apgd, apgd_targeted, checkpoints
from robustlab.errors import UserError

SHAPES = [(16,), (4, 4), (1, 4, 4)]
APGD_MODULE = sys.modules["robustlab.attacks.apgd"]  # the package re-exports a function named apgd


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _setup(n: int, shape: tuple[int, ...], num_classes: int, seed: int = 0):
    model = LinearClassifier(shape, num_classes=num_classes, seed=seed)
    x = interior_inputs(n, shape, seed=seed + 1)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y


def _critical_eps(model: LinearClassifier, x: torch.Tensor, y: torch.Tensor, dual: float) -> torch.Tensor:
    """Smallest eps breaking each sample (linear model, interior inputs): min_o margin_o / ‖w_o − w_y‖_dual."""
    with torch.no_grad():
        logits = model(x)
        diff = model.weight.unsqueeze(0) - model.weight[y].unsqueeze(1)  # (N, K, D): w_o - w_y
        margins = logits.gather(1, y.unsqueeze(1)) - logits  # z_y - z_o
        crit = margins / diff.norm(p=dual, dim=2).clamp_min(1e-12)
        crit.scatter_(1, y.unsqueeze(1), float("inf"))
        return crit.min(dim=1).values


def _eps_split(crit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternate 0.8× (unbreakable) and 1.25× (breakable) the critical eps, capped at 0.3 (interior)."""
    factor = torch.tensor([0.8, 1.25]).repeat(len(crit))[: len(crit)]
    eps = (crit * factor).clamp_max(0.3)
    return eps, eps > crit


def _wrong(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1) != y


# Checkpoint iterations printed by the reference (pyautoattack 0.2.0 APGDAttack, iterations at which it
# calls check_oscillation, counted from 1); see test_checkpoints_equal_the_reference_s for the live check.
REFERENCE_CHECKPOINTS = {
    1: [1],
    5: [1, 2, 3, 4, 5],
    10: [2, 3, 4, 5, 6, 7, 8, 9, 10],
    37: [8, 15, 21, 26, 30, 33, 35, 37],
    50: [11, 21, 30, 38, 45],
    100: [22, 41, 57, 70, 80, 87, 93, 99],
    200: [44, 82, 114, 140, 160, 174, 186, 198],
}


@pytest.mark.parametrize("steps", REFERENCE_CHECKPOINTS)
def test_checkpoints_are_the_reference_s(steps: int) -> None:
    assert checkpoints(steps) == REFERENCE_CHECKPOINTS[steps]


def _reference_checkpoints(steps: int) -> list[int]:
    """Run the reference's APGD and record where it checks the step size."""
    reference = pytest.importorskip("pyautoattack.autopgd_base")
    attack = reference.APGDAttack(nn.Linear(16, 3), n_iter=steps, eps=0.1, norm="Linf", device="cpu")
    x = torch.rand(2, 16, generator=_gen())
    attack.init_hyperparam(x)
    seen: list[int] = []
    original = attack.check_oscillation

    def record(losses, j, k, best, k3=0.75):  # noqa: ANN001, ANN202 - the reference's signature
        seen.append(j + 1)
        return original(losses, j, k, best, k3)

    attack.check_oscillation = record
    attack.attack_single_run(x, torch.zeros(2, dtype=torch.long))
    return seen


@pytest.mark.parametrize("steps", [*REFERENCE_CHECKPOINTS, 333])
def test_checkpoints_equal_the_reference_s(steps: int) -> None:
    assert checkpoints(steps) == _reference_checkpoints(steps)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


@pytest.mark.parametrize("loss,eps,steps", [("ce", 0.03, 37), ("dlr", 0.03, 37), ("ce", 0.05, 100), ("dlr", 0.02, 100),
                                            ("dlr-targeted", 0.02, 50)])
def test_trajectory_equals_the_reference_from_the_same_start(
    monkeypatch: pytest.MonkeyPatch, loss: str, eps: float, steps: int
) -> None:
    """From the same start, our APGD ends where the reference's does: same broken samples, same best point.

    Pins the whole algorithm (schedule, both conditions, momentum, resets, DLR losses) on a small MLP
    that APGD half breaks; our batch compaction must not change any sample's path."""
    reference = pytest.importorskip("pyautoattack.autopgd_base")
    model = _mlp()
    x = torch.rand(64, 1, 8, 8, generator=_gen(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    x0 = (x + (2 * torch.rand(x.shape, generator=_gen(2)) - 1) * eps).clamp(0, 1)
    if loss == "dlr-targeted":
        attack = reference.APGDAttack_targeted(model, n_iter=steps, eps=eps, norm="Linf", device="cpu")
        with torch.no_grad():
            attack.y_target = model(x).sort(dim=1)[1][:, -2]
    else:
        attack = reference.APGDAttack(model, n_iter=steps, eps=eps, norm="Linf", device="cpu", loss=loss)
    attack.init_hyperparam(x)
    ref_best, ref_robust, _, _ = attack.attack_single_run(x, y, x_init=x0.clone())

    monkeypatch.setattr(APGD_MODULE, "random_start", lambda *_args, **_kw: x0.clone())
    if loss == "dlr-targeted":
        ours = apgd_targeted(model, x, y, eps=eps, steps=steps, n_target_classes=1)
    else:
        ours = apgd(model, x, y, eps=eps, steps=steps, loss=loss)
    broken = _wrong(model, ours, y)
    assert 0.2 < broken.float().mean() < 0.8  # both outcomes are exercised
    assert torch.equal(broken, ~ref_robust)
    torch.testing.assert_close(ours[ref_robust], ref_best[ref_robust], atol=1e-6, rtol=0)


class _Scripted(nn.Module):
    """Two logits whose CE loss (label 0) at the t-th call is ``scripts[i][t]`` for a sample whose first pixel
    is near ``i / 10`` (eps < 0.05 keeps it there), and whose input gradient is a fixed random direction per
    call: the loss sequences, not the geometry, decide every step-size rule. A loss above log 2 breaks."""

    def __init__(self, scripts: list[list[float]], dim: int, skip: int) -> None:
        super().__init__()
        self.scripts, self.calls, self.skip = torch.tensor(scripts), 0, skip  # skip: calls before the attack's
        self.directions = torch.randn(self.scripts.shape[1], dim, generator=_gen(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = max(self.calls - self.skip, 0)
        self.calls += 1
        flat = x.flatten(1)
        ids = (flat[:, 0].detach() * 10).round().long()
        level = self.scripts[ids, t].expm1().log()  # CE of logits (0, level) for label 0
        moving = (flat - flat.detach()) @ self.directions[t]  # value 0, gradient = the direction
        return torch.stack([torch.zeros_like(moving), level + moving], dim=1)


def _scripted_inputs(ids: list[int]) -> torch.Tensor:
    x = interior_inputs(len(ids), (1, 4, 4), seed=4)
    x[:, 0, 0, 0] = torch.tensor(ids, dtype=x.dtype) / 10
    return x


# Loss at the start, then per iteration (37 iterations: checkpoints after 8, 15, 21, 26, 30, 33, 35).
# Window 1: 7 of 8 changes are increases when the first compares with 0 (the reference), 6 if it compared
# with the start: condition 1 must not fire, and condition 2 must not fire at the first checkpoint
# although the best loss (the start's) did not improve. Window 2: all increases, best unchanged:
# condition 2 fires. Then the loss passes the start's and keeps rising.
SCRIPT = [0.5, 0.01, 0.02, 0.03, 0.015, 0.04, 0.05, 0.06, 0.07, *(0.08 + 0.01 * i for i in range(13)),
          *(0.6 + 0.001 * i for i in range(16))]
_noise = torch.rand(2, len(SCRIPT), generator=_gen(8)) * 0.6
SCRIPTS = [
    SCRIPT,
    [0.3, 0.31, 0.32, 0.9, *([0.9] * 34)],  # broken at iteration 3
    [0.1 + 0.01 * t for t in range(38)],  # rises throughout: never halves
    [0.6 - 0.01 * t for t in range(38)],  # falls throughout: halves at every checkpoint
    [0.3 + 0.05 * (t % 2) for t in range(19)] + [0.9] * 19,  # oscillates, broken at iteration 19
    *(row.tolist() for row in _noise[:2]),  # no pattern
    [*(0.1 + 0.005 * t for t in range(31)), *([0.95] * 7)],  # rises, never halves, broken at iteration 31
]


def test_step_size_rules_follow_the_reference_on_a_scripted_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = pytest.importorskip("pyautoattack.autopgd_base")
    x = _scripted_inputs([0, 0, 0])
    y = torch.zeros(3, dtype=torch.long)
    x0 = x + 0.015 * (2 * torch.rand(x.shape, generator=_gen(6)) - 1)
    steps = len(SCRIPT) - 1
    attack = reference.APGDAttack(_Scripted(SCRIPTS, 16, skip=0), n_iter=steps, eps=0.03, norm="Linf", device="cpu")
    attack.init_hyperparam(x)
    ref_best, ref_robust, ref_loss, _ = attack.attack_single_run(x, y, x_init=x0.clone())
    assert ref_robust.all() and torch.allclose(ref_loss, torch.tensor(SCRIPT[-1]))
    monkeypatch.setattr(APGD_MODULE, "random_start", lambda *_args, **_kw: x0.clone())
    ours = apgd(_Scripted(SCRIPTS, 16, skip=1), x, y, eps=0.03, steps=steps)  # skip apgd's clean forward
    torch.testing.assert_close(ours, ref_best, atol=1e-6, rtol=0)


def test_compacted_batch_gives_each_sample_its_own_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broken samples leave the working batch with all their state (step size, momentum, best loss,
    checkpoint counters); the survivors must not notice. The slow reference loop attacks one sample at a
    time (nothing to compact). Samples that break come first, so every compaction shifts the others."""
    monkeypatch.setattr(APGD_MODULE, "random_start",
                        lambda x, eps, *_: (x + 0.5 * eps * torch.sin(997 * x)).clamp(0, 1))
    ids = [1, 4, 7, 0, 2, 3, 5, 6]
    x = _scripted_inputs(ids)
    y = torch.zeros(len(ids), dtype=torch.long)
    eps = torch.linspace(0.01, 0.04, len(ids))  # per-sample step sizes differ from the start
    steps = len(SCRIPT) - 1
    successes: list[torch.Tensor] = []
    original = APGD_MODULE._apgd_attempt

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        out = original(*args, **kwargs)
        successes.append(out[1])
        return out

    monkeypatch.setattr(APGD_MODULE, "_apgd_attempt", spy)
    batched = apgd(_Scripted(SCRIPTS, 16, skip=1), x, y, eps=eps, steps=steps)
    slow = torch.cat([
        apgd(_Scripted(SCRIPTS, 16, skip=1), x[i : i + 1], y[i : i + 1], eps=eps[i : i + 1], steps=steps)
        for i in range(len(ids))
    ])
    assert successes[0].tolist() == [True] * 3 + [False] * 5  # ids 1, 4, 7 break (at iterations 3, 19, 31)
    assert torch.cat(successes[1:]).tolist() == successes[0].tolist()
    assert torch.equal(batched, slow)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 3, 8])
def test_linf_ce_two_classes_reaches_analytic_optimum(n: int, shape: tuple[int, ...]) -> None:
    model, x, y = _setup(n, shape, num_classes=2)
    eps, breakable = _eps_split(_critical_eps(model, x, y, dual=1))
    x_adv = apgd(model, x, y, eps=eps, steps=20, generator=_gen())
    assert torch.equal(_wrong(model, x_adv, y), breakable)
    w_diff = (model.weight[1 - y] - model.weight[y]).view(x.shape)
    optimum = x + eps.view(-1, *[1] * len(shape)) * w_diff.sign()
    keep = ~breakable
    torch.testing.assert_close(x_adv[keep], optimum[keep], atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 3, 8])
def test_l2_ce_two_classes_reaches_analytic_optimum(n: int, shape: tuple[int, ...]) -> None:
    model, x, y = _setup(n, shape, num_classes=2)
    eps, breakable = _eps_split(_critical_eps(model, x, y, dual=2))
    x_adv = apgd(model, x, y, eps=eps, norm="l2", steps=50, generator=_gen())
    assert torch.equal(_wrong(model, x_adv, y), breakable)
    assert ((x_adv - x).flatten(1).norm(dim=1) <= eps * (1 + 1e-5) + 1e-7).all()
    w_diff = model.weight[1 - y] - model.weight[y]
    gain = ((x_adv - x).flatten(1) * w_diff).sum(dim=1)  # increase of z_o - z_y
    best = eps * w_diff.norm(dim=1)
    assert (gain[~breakable] >= 0.99 * best[~breakable]).all()


@pytest.mark.parametrize("loss,num_classes", [("ce", 5), ("dlr", 3)])
@pytest.mark.parametrize("norm,dual", [("linf", 1), ("l2", 2)])
def test_multiclass_breaks_exactly_the_breakable(loss: str, num_classes: int, norm: str, dual: float) -> None:
    # DLR on a linear model with K > 3 classes has spurious local maxima (the loss also rises when the
    # denominator z_pi1 - z_pi3 grows), and misses some samples near the threshold; the reference
    # implementation does the same, so DLR is checked on 3 classes here.
    model, x, y = _setup(16, (1, 4, 4), num_classes=num_classes, seed=3)
    eps, breakable = _eps_split(_critical_eps(model, x, y, dual=dual))
    x_adv = apgd(model, x, y, eps=eps, norm=norm, loss=loss, steps=50, generator=_gen())
    assert torch.equal(_wrong(model, x_adv, y), breakable)


@pytest.mark.parametrize("num_classes", [4, 10])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_targeted_breaks_exactly_the_breakable(num_classes: int, n: int) -> None:
    model, x, y = _setup(n, (1, 4, 4), num_classes=num_classes, seed=5)
    eps, breakable = _eps_split(_critical_eps(model, x, y, dual=1))
    x_adv = apgd_targeted(model, x, y, eps=eps, steps=30, generator=_gen())
    assert torch.equal(_wrong(model, x_adv, y), breakable)


class _Bowl(nn.Module):
    """Two logits ``(0, -k * ‖x - centre‖²)``: for label 0 the CE loss peaks at ``centre``, inside the ball."""

    def __init__(self, centre: torch.Tensor, k: float = 10.0) -> None:
        super().__init__()
        self.register_buffer("centre", centre)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = (x - self.centre).pow(2).flatten(1).sum(dim=1)
        return torch.stack([torch.zeros_like(dist), -self.k * dist], dim=1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_step_halving_homes_in_on_an_interior_maximum(norm: str) -> None:
    # A fixed step of 2*eps keeps jumping over an interior maximum; the checkpoint halvings must not.
    x = interior_inputs(4, (1, 4, 4), seed=2)
    offset = torch.rand(x.shape, generator=_gen(9)) * 2 - 1
    eps = 0.2 if norm == "linf" else 0.4
    size = offset.abs().amax(dim=(1, 2, 3), keepdim=True) if norm == "linf" else offset.flatten(1).norm(dim=1)
    centre = x + 0.5 * eps * offset / size.view(-1, 1, 1, 1)
    model = _Bowl(centre)
    y = torch.zeros(4, dtype=torch.long)
    x_adv = apgd(model, x, y, eps=eps, norm=norm, steps=100, generator=_gen())
    assert (x_adv - centre).abs().max() <= eps / 16


ATTACKS = {
    "apgd-ce": functools.partial(apgd, steps=10),
    "apgd-dlr": functools.partial(apgd, steps=10, loss="dlr"),
    "apgd-ce-l2": functools.partial(apgd, steps=10, norm="l2"),
    "apgd-t": functools.partial(apgd_targeted, steps=5, n_target_classes=3),
}


def _edge_inputs(n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inputs with many coordinates at or near 0 and 1, so the box clips the eps-ball."""
    g = _gen(7)
    x = torch.rand((n, *shape), generator=g)
    pick = torch.randint(0, 4, x.shape, generator=g)
    return torch.where(pick == 0, 0.0, torch.where(pick == 1, 1.0, torch.where(pick == 2, x * 0.02, x)))


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("n", [1, 3, 8])
def test_contract(name: str, n: int) -> None:
    attack = ATTACKS[name]
    shape = (1, 4, 4)
    model = LinearClassifier(shape, num_classes=5, seed=2)
    model.train()
    x = _edge_inputs(n, shape)
    y = torch.randint(0, 5, (n,), generator=_gen(3))
    eps = torch.linspace(0.05, 0.5, n)
    x_adv = attack(model, x, y, eps=eps, generator=_gen(1))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).flatten(1)
    size = delta.norm(dim=1) if "l2" in name else delta.abs().amax(dim=1)
    assert (size <= eps + 1e-6).all()
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    again = attack(model, x, y, eps=eps, generator=_gen(1))
    assert torch.equal(x_adv, again)
    model.eval()
    with torch.no_grad():  # works under no_grad, leaves eval mode alone
        attack(model, x, y, eps=eps, generator=_gen(1))
    assert not model.training


@pytest.mark.parametrize("name", ATTACKS)
def test_eps_zero_returns_input(name: str) -> None:
    model, x, y = _setup(4, (1, 4, 4), num_classes=5)
    x_adv = ATTACKS[name](model, x, y, eps=0.0, generator=_gen())
    assert torch.equal(x_adv, x)
    assert not _wrong(model, x_adv, y).any()


def test_misclassified_inputs_are_returned_unchanged() -> None:
    model, x, y = _setup(6, (1, 4, 4), num_classes=5)
    y_wrong = (y + 1) % 5
    assert torch.equal(apgd(model, x, y_wrong, eps=0.1, steps=5, generator=_gen()), x)


class _TwoSlopes(nn.Module):
    """Label 0 unless the class-1 logit ``-1 + 20 relu(u) + 5 relu(-u)`` (``u`` = first pixel - 0.5) is
    positive: the loss rises away from ``u = 0`` on both sides, but only the right edge of the ball
    (``u = 0.075``) breaks the sample, so the side of APGD's random start decides the outcome."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.flatten(1)[:, 0] - 0.5
        z1 = -1 + 20 * torch.relu(u) + 5 * torch.relu(-u)
        return torch.stack([torch.zeros_like(z1), z1], dim=1)


def test_restarts_never_lower_success_and_each_draws_a_new_start(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _TwoSlopes()
    x = torch.full((32, 1, 4, 4), 0.5)
    y = torch.zeros(32, dtype=torch.long)
    attempts: list[tuple[int, torch.Tensor]] = []
    original = APGD_MODULE._apgd_attempt

    def spy(model_, x_, *args, **kwargs):  # noqa: ANN001, ANN202
        out = original(model_, x_, *args, **kwargs)
        attempts.append((x_.shape[0], out[1]))
        return out

    once = _wrong(model, apgd(model, x, y, eps=0.075, steps=20, generator=_gen(4)), y)
    monkeypatch.setattr(APGD_MODULE, "_apgd_attempt", spy)
    thrice = _wrong(model, apgd(model, x, y, eps=0.075, steps=20, restarts=3, generator=_gen(4)), y)
    assert 0 < once.sum() < 24  # one start breaks about half
    assert (thrice | ~once).all() and thrice.sum() > once.sum()  # the later starts break more, lose none
    sizes, broken = [size for size, _ in attempts], [int(ok.sum()) for _, ok in attempts]
    assert sizes[0] == 32 and all(sizes[i + 1] == sizes[i] - broken[i] for i in range(len(sizes) - 1))  # survivors only
    assert sum(broken) == int(thrice.sum())


class _NoisyLinear(nn.Module):
    """A randomized model (noise on the input) that counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.linear, self.calls = LinearClassifier((1, 4, 4), num_classes=5, seed=2), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x + 0.05 * torch.randn(x.shape, generator=_gen(self.calls)))


def test_eot_averages_each_gradient_over_that_many_passes() -> None:
    model = _NoisyLinear()
    x = interior_inputs(6, (1, 4, 4), seed=3)
    y = model.linear(x).argmax(1).detach()
    x_adv = apgd(model, x, y, eps=0.1, steps=3, eot=5, generator=_gen())
    # clean forward, 5 at the start, 5 at each of the first two iterations, 1 at the last (no gradient);
    # under EOT broken samples stay in the batch (one noisy verdict proves little)
    assert model.calls == 1 + 5 + 5 * 2 + 1
    assert ((x_adv - x).abs().amax(dim=(1, 2, 3)) <= 0.1 + 1e-6).all()
    with pytest.raises(UserError):
        apgd(model, x, y, eps=0.1, eot=0)


def test_bad_arguments_raise_user_error() -> None:
    model, x, y = _setup(2, (1, 4, 4), num_classes=2)
    with pytest.raises(UserError):
        apgd(model, x, y, eps=0.1, loss="dlr")  # DLR needs 3 classes
    with pytest.raises(UserError):
        apgd(model, x, y, eps=0.1, norm="l1")
    with pytest.raises(UserError):
        apgd(model, x, y, eps=0.1, steps=0)
    with pytest.raises(UserError):
        apgd(model, x, y, eps=-0.1)
    with pytest.raises(UserError):
        apgd(model, x, y, eps=torch.tensor([0.1, 0.2, 0.3]))
    model3, x3, y3 = _setup(2, (1, 4, 4), num_classes=3)
    with pytest.raises(UserError):
        apgd_targeted(model3, x3, y3, eps=0.1)  # targeted DLR needs 4 classes


class _Flat(nn.Module):
    """Constant logits (class 0 wins everywhere): zero gradient, so APGD's output is its starting point."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(x.shape[0], 4) + 0 * x.flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("attack", [apgd, functools.partial(apgd_targeted, n_target_classes=3)])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_surface_start_is_the_reference_s_and_ball_start_lies_inside(attack, norm: str) -> None:
    """``start="surface"`` (the reference's, for ``autoattack``) puts every start on the ε-ball's face (L∞: one
    coordinate at ε) or sphere (L2); the default ``"ball"`` start lies strictly inside for nearly all samples."""
    x, y, eps = torch.full((64, 1, 4, 4), 0.5), torch.zeros(64, dtype=torch.long), 0.1
    size = {"linf": lambda d: d.flatten(1).abs().amax(1), "l2": lambda d: d.flatten(1).norm(dim=1)}[norm]
    surface = size(attack(_Flat(), x, y, eps=eps, norm=norm, steps=2, start="surface", generator=_gen()) - x)
    ball = size(attack(_Flat(), x, y, eps=eps, norm=norm, steps=2, generator=_gen()) - x)
    assert torch.allclose(surface, torch.full_like(surface, eps), atol=1e-6)
    assert (ball < eps - 1e-4).float().mean() > 0.9


def test_unknown_start_is_a_user_error() -> None:
    model, x, y = _setup(4, (16,), 3)
    with pytest.raises(UserError, match="apgd start must be one of ball, surface"):
        apgd(model, x, y, eps=0.1, start="edge")
