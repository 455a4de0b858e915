"""APGD and APGD-T (Croce & Hein 2020) against linear models with a known optimum, plus the contract."""

from __future__ import annotations

import functools

import pytest
import torch
from toy_models import LinearClassifier, interior_inputs
from torch import nn

from robustlab.attacks.apgd import apgd, apgd_targeted, checkpoints
from robustlab.errors import UserError

SHAPES = [(16,), (4, 4), (1, 4, 4)]



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


def test_checkpoints_follow_the_paper() -> None:
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (then 1.05 > 1)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1) == [1]


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


def test_restarts_never_lower_success() -> None:
    model, x, y = _setup(32, (1, 4, 4), num_classes=10, seed=11)
    eps = 0.6 * _critical_eps(model, x, y, dual=1).median()
    once = _wrong(model, apgd(model, x, y, eps=float(eps), steps=5, generator=_gen(4)), y)
    thrice = _wrong(model, apgd(model, x, y, eps=float(eps), steps=5, restarts=3, generator=_gen(4)), y)
    assert (thrice | ~once).all() and thrice.sum() >= once.sum()


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
