"""Square Attack (Andriushchenko et al. 2020), L∞: breaks a small digits model, respects the contract."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from toy_models import LinearClassifier, digits_images, interior_inputs, train_digits_mlp

from robustlab.attacks.square import square, square_fraction
from robustlab.errors import UserError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _wrong(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1) != y


class _NoGrad(nn.Module):
    """Fails if called with autograd enabled, and counts the rows it is queried on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled(), "square must be gradient-free"
        self.rows += x.shape[0]
        return self.inner(x)


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An undefended MLP trained for well under a second on sklearn digits (8×8, scaled to [0, 1])."""
    x, y = digits_images()
    g = torch.Generator().manual_seed(0)
    epochs = (torch.randperm(1400, generator=g) for _ in range(10))
    model = train_digits_mlp(x, y, (perm[i : i + 200] for perm in epochs for i in range(0, 1400, 200)), g)
    x_test, y_test = x[1400:1464], y[1400:1464]
    assert (~_wrong(model, x_test, y_test)).float().mean() > 0.8
    return model, x_test, y_test


def test_schedule_halves_where_the_reference_does() -> None:
    # candidate i is the reference's loop counter i - 1, which halves p once it passes 10, 50, ...
    assert square_fraction(0.8, 1) == square_fraction(0.8, 11) == 0.8
    assert square_fraction(0.8, 12) == square_fraction(0.8, 51) == 0.4
    assert square_fraction(0.8, 52) == 0.2
    assert square_fraction(0.8, 501) == 0.8 / 8 and square_fraction(0.8, 502) == 0.8 / 16
    assert square_fraction(0.8, 9000) == 0.8 / 512
    # rescaled to 10,000 queries: with 5,000, the counter int((i - 1) * 2) passes 10 at i = 7
    assert square_fraction(0.8, 6, 5000) == 0.8 and square_fraction(0.8, 7, 5000) == 0.4
    assert square_fraction(0.8, 4001, 5000) == 0.8 / 256 and square_fraction(0.8, 4002, 5000) == 0.8 / 512


def test_breaks_undefended_digits_model(digits) -> None:
    model, x, y = digits
    counted = _NoGrad(model)
    x_adv = square(counted, x, y, eps=0.3, queries=1000, generator=_gen())
    assert _wrong(model, x_adv, y).all()
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert counted.rows < 64 * 1000 // 4  # stops on each sample once it is broken


def test_more_queries_break_more(digits) -> None:
    model, x, y = digits
    few = _wrong(model, square(model, x, y, eps=0.1, queries=20, generator=_gen()), y).sum()
    many = _wrong(model, square(model, x, y, eps=0.1, queries=400, generator=_gen()), y).sum()
    assert many > few


@pytest.mark.parametrize("n", [1, 3, 8])
def test_linear_model_breaks_exactly_the_breakable(n: int) -> None:
    shape = (1, 4, 4)
    model = LinearClassifier(shape, num_classes=2, seed=0)
    x = interior_inputs(n, shape, seed=1)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(dim=1)
    w_diff = model.weight[1 - y] - model.weight[y]
    margin = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, (1 - y)[:, None]).squeeze(1)
    critical = margin / w_diff.abs().sum(dim=1)
    eps = (critical * torch.tensor([0.8, 1.25]).repeat(n)[:n]).clamp_max(0.3)
    x_adv = square(model, x, y, eps=eps, queries=600, generator=_gen())
    breakable = eps > critical
    assert torch.equal(_wrong(model, x_adv, y), breakable)
    optimum = x + eps.view(-1, 1, 1, 1) * w_diff.view(x.shape).sign()  # a vertex: random search reaches it
    torch.testing.assert_close(x_adv[~breakable], optimum[~breakable], atol=1e-6, rtol=0)


def _edge_inputs(n: int) -> torch.Tensor:
    g = _gen(7)
    x = torch.rand((n, 3, 6, 6), generator=g)
    pick = torch.randint(0, 4, x.shape, generator=g)
    return torch.where(pick == 0, 0.0, torch.where(pick == 1, 1.0, torch.where(pick == 2, x * 0.02, x)))


class _TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.drop = nn.Dropout(0.0)
        self.head = nn.Linear(4 * 4 * 4, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.conv(x))).flatten(1))


@pytest.mark.parametrize("n", [1, 3, 8])
def test_contract(n: int) -> None:
    model = _TinyCNN().train()
    counted = _NoGrad(model)
    x = _edge_inputs(n)
    y = torch.randint(0, 5, (n,), generator=_gen(3))
    eps = torch.linspace(0.05, 0.5, n)
    x_adv = square(counted, x, y, eps=eps, queries=50, generator=_gen(1))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert ((x_adv - x).flatten(1).abs().amax(dim=1) <= eps + 1e-6).all()
    assert model.training and counted.rows <= n * 51  # clean check + 50 queries per sample
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x_adv, square(model, x, y, eps=eps, queries=50, generator=_gen(1)))


def test_queries_are_counted_per_sample() -> None:
    model = _NoGrad(_TinyCNN().eval())
    x = _edge_inputs(4)
    with torch.no_grad():
        y = model.inner(x).argmax(dim=1)
    square(model, x, y, eps=1e-4, queries=30, generator=_gen())  # too small to break anything
    assert model.rows == 4 * (1 + 30)


def test_eps_zero_and_misclassified_return_input(digits) -> None:
    model, x, y = digits
    counted = _NoGrad(model)
    assert torch.equal(square(counted, x, y, eps=0.0, queries=100, generator=_gen()), x)
    assert counted.rows == x.shape[0]  # only the clean check
    y_wrong = (model(x).argmax(dim=1) + 1) % 10
    assert torch.equal(square(model, x, y_wrong, eps=0.3, queries=100, generator=_gen()), x)


def test_restarts_never_lower_success(digits) -> None:
    model, x, y = digits
    once = _wrong(model, square(model, x, y, eps=0.05, queries=30, generator=_gen(2)), y)
    thrice = _wrong(model, square(model, x, y, eps=0.05, queries=30, restarts=3, generator=_gen(2)), y)
    assert (thrice | ~once).all()


def test_bad_arguments_raise_user_error() -> None:
    model = _TinyCNN()
    x, y = _edge_inputs(2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(UserError, match="mode"):
        square(model, x, y, eps=0.5, mode="fast")
    with pytest.raises(UserError, match="norm"):
        square(model, x, y, eps=0.5, norm="l1")
    with pytest.raises(UserError):
        square(model, x.flatten(1), y, eps=0.1)
    with pytest.raises(UserError):
        square(model, x, y, eps=0.1, queries=0)
    with pytest.raises(UserError):
        square(model, x, y, eps=-0.1)
    with pytest.raises(UserError):
        square(model, x, y, eps=0.1, p_init=0.0)


def test_default_budget_is_5000_queries_here_and_in_the_suite() -> None:
    from robustlab.evaluate.suite import build_attack

    assert inspect.signature(square).parameters["queries"].default == 5000
    spec = build_attack("square", eps=0.03, norm="linf", step_size=0.0)
    assert spec.fn.func is square and spec.fn.keywords["queries"] == 5000 and spec.fn.keywords["p_init"] == 0.8


class _Recorder(nn.Module):
    """Keeps every batch it is queried on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.inner(x)


@pytest.mark.parametrize("mode", ["strong", "reference"])
def test_linf_starts_from_vertical_stripes(mode: str) -> None:
    model = _Recorder(LinearClassifier((3, 6, 6), num_classes=3, seed=0))
    x = interior_inputs(8, (3, 6, 6), seed=4)
    with torch.no_grad():
        y = model.inner(x).argmax(dim=1)
    square(model, x, y, eps=0.01, queries=2, mode=mode, generator=_gen())
    delta = model.seen[1] - x  # the first query after the clean check is the initial point
    torch.testing.assert_close(delta.abs(), torch.full_like(delta, 0.01))
    signs = delta.sign()
    assert torch.equal(signs, signs[:, :, :1].expand_as(signs))  # one value per sample, channel and column
    columns = signs[:, :, 0]
    assert (columns == 1).any() and (columns == -1).any()
    assert not torch.equal(columns[:, :1].expand_as(columns), columns)  # per channel, not per column only


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_compaction_changes_nothing(digits, norm: str, eps: float) -> None:
    model, x, y = digits
    for mode in ("strong", "reference"):
        counted = [_NoGrad(model), _NoGrad(model)]
        run = [square(m, x, y, eps=eps, norm=norm, queries=60, mode=mode, compact=c, generator=_gen(5))
               for m, c in zip(counted, (True, False))]
        assert torch.equal(run[0], run[1])
        assert 0 < _wrong(model, run[0], y).sum() < x.shape[0]
        assert counted[0].rows < counted[1].rows  # broken samples leave the batch


@pytest.mark.parametrize("norm,eps", [("linf", 0.06), ("l2", 0.6)])
def test_strong_mode_is_at_least_as_strong_as_reference_mode(digits, norm: str, eps: float) -> None:
    model, x, y = digits
    broken = {
        mode: _wrong(model, square(model, x, y, eps=eps, norm=norm, queries=200, mode=mode, generator=_gen(1)), y).sum()
        for mode in ("strong", "reference")
    }
    assert broken["strong"] >= broken["reference"] > 0


@pytest.mark.parametrize("n", [1, 3, 8])
def test_l2_inside_ball_and_box(n: int) -> None:
    x = _edge_inputs(n)
    y = torch.randint(0, 5, (n,), generator=_gen(3))
    eps = torch.linspace(0.1, 2.0, n)
    for mode in ("strong", "reference"):
        x_adv = square(_TinyCNN(), x, y, eps=eps, norm="l2", queries=40, mode=mode, generator=_gen(1))
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        assert ((x_adv - x).flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all()


@pytest.mark.parametrize("mode,factor", [("strong", 1.6), ("reference", 3.0)])
def test_l2_breaks_exactly_the_breakable_linear_samples(mode: str, factor: float) -> None:
    """Below the minimal L2 distance nothing can break; random search gets close to it (closer per sample)."""
    shape = (1, 8, 8)
    model = LinearClassifier(shape, num_classes=2, seed=0)
    x = interior_inputs(8, shape, seed=1)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(dim=1)
    w_diff = model.weight[1 - y] - model.weight[y]
    margin = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, (1 - y)[:, None]).squeeze(1)
    critical = margin / w_diff.norm(dim=1)  # the minimal L2 distance to the boundary (the box is not reached)
    eps = critical * torch.tensor([0.9, factor]).repeat(4)
    x_adv = square(model, x, y, eps=eps, norm="l2", queries=1000, mode=mode, generator=_gen())
    assert torch.equal(_wrong(model, x_adv, y), eps > critical)


class _Constant(nn.Module):
    """Class 0 wins whatever the input: no candidate is ever accepted."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([1.0, 0.0]).expand(x.shape[0], 2)


def test_strong_mode_never_spends_a_query_on_a_no_op() -> None:
    x = interior_inputs(6, (1, 3, 3), seed=2)
    y = torch.zeros(6, dtype=torch.long)
    no_ops = {}
    for mode in ("strong", "reference"):
        model = _Recorder(_Constant())
        square(model, x, y, eps=0.1, queries=40, mode=mode, generator=_gen())
        start, candidates = model.seen[1], torch.stack(model.seen[2:])  # the initial point stays the best
        no_ops[mode] = (candidates == start).flatten(2).all(dim=2).sum()
    assert no_ops["strong"] == 0 and no_ops["reference"] > 10


def test_rescaled_schedule_shrinks_squares_sooner() -> None:
    x = interior_inputs(6, (1, 8, 8), seed=3)
    y = torch.zeros(6, dtype=torch.long)
    changed = {}
    for rescale in (False, True):
        model = _Recorder(_Constant())
        square(model, x, y, eps=0.1, queries=20, rescale_schedule=rescale, generator=_gen())
        start, candidates = model.seen[1], torch.stack(model.seen[3:12])  # candidates 2 to 10
        changed[rescale] = (candidates != start).flatten(2).sum(dim=2).max()
    # candidate 2 of 20 is the reference's 500th of 10,000: p = 0.8 / 8, squares of side 3, not 7
    assert changed[True] <= 9 < changed[False]
