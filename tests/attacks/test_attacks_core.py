"""FGSM, PGD, CW and pass counting on toy models with known answers (STYLE.md §g). CPU, seconds."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from toy_models import LinearClassifier, interior_inputs

from robustlab.attacks.counting import Stopwatch, count_passes
from robustlab.attacks.pgd import cw, fgsm, pgd
from robustlab.errors import UserError

EPS = 0.1

ATTACKS = {
    "fgsm-linf": functools.partial(fgsm, norm="linf"),
    "fgsm-l2": functools.partial(fgsm, norm="l2"),
    "pgd-linf": functools.partial(pgd, norm="linf", steps=5, step_size=0.03),
    "pgd-l2": functools.partial(pgd, norm="l2", steps=5, step_size=0.05),
    "pgd-margin-restarts": functools.partial(pgd, loss="margin", steps=3, step_size=0.05, restarts=2),
    "pgd-targeted": functools.partial(pgd, steps=3, step_size=0.05, targeted=True),
    "cw-linf": functools.partial(cw, steps=5, step_size=0.03),
    "cw-l2-kappa": functools.partial(cw, norm="l2", steps=5, step_size=0.05, kappa=1.0),
}


class ModeProbe(nn.Module):
    """Records ``self.training`` at every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[bool] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(self.training)
        return x


def mlp(d: int = 16, k: int = 3, seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Dropout(dropout), ModeProbe(), nn.Linear(32, k)
    )


def robust_linear(n: int) -> tuple[LinearClassifier, torch.Tensor, torch.Tensor]:
    """2-class float64 linear model predicting class 0 on every input, with a margin just larger (by 2)
    than any L∞ eps=0.1 perturbation can close: no attack succeeds, so PGD returns its last iterate.
    The margin stays small enough that the CE gradient does not underflow in float64."""
    model = LinearClassifier().double()
    x = interior_inputs(n).double()
    y = torch.zeros(n, dtype=torch.long)
    with torch.no_grad():
        w_diff = model.weight[1] - model.weight[0]
        shift = x.flatten(1) @ w_diff + EPS * w_diff.abs().sum()
        model.bias.copy_(torch.stack([shift.max() + 2.0, torch.zeros((), dtype=shift.dtype)]))
        z = model(x)
        worst = z[:, 1] - z[:, 0] + EPS * w_diff.abs().sum()
    assert (worst <= -2.0 + 1e-9).all(), "precondition: every sample robust at eps"
    return model, x, y


def linf_corner(model: LinearClassifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Analytic L∞ optimum of a 2-class linear model: ``x + eps * sign(w_o - w_y)``."""
    w_diff = (model.weight[1 - y] - model.weight[y]).detach()
    return x + EPS * w_diff.sign().view_as(x)


def no_grads(model: nn.Module) -> bool:
    return all(p.grad is None for p in model.parameters())


# --- analytic optima ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 8])
def test_fgsm_linf_reaches_corner_in_one_step(n: int) -> None:
    model = LinearClassifier()
    x = interior_inputs(n)
    y = model(x).argmax(1)
    x_adv = fgsm(model, x, y, eps=EPS)
    assert torch.equal(x_adv, linf_corner(model, x, y))
    assert no_grads(model)


@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_linf_reaches_corner(loss: str, random_start: bool) -> None:
    model, x, y = robust_linear(8)
    # steps * step_size = 2.5 eps >= 2 eps: enough to cross the ball from any random start.
    x_adv = pgd(model, x, y, eps=EPS, steps=10, step_size=EPS / 4, loss=loss, random_start=random_start,
                generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_adv, linf_corner(model, x, y))


def test_cw_linf_reaches_corner() -> None:
    model, x, y = robust_linear(4)
    x_adv = cw(model, x, y, eps=EPS, steps=10, step_size=EPS / 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_adv, linf_corner(model, x, y))


@pytest.mark.parametrize(("random_start", "steps", "tol"), [(False, 4, 1e-5), (True, 40, 1e-3)])
def test_pgd_l2_reaches_optimum(random_start: bool, steps: int, tol: float) -> None:
    model, x, y = robust_linear(8)
    d = (model.weight[1] - model.weight[0]).detach()
    expected = x + EPS * (d / d.norm()).view_as(x[0])
    x_adv = pgd(model, x, y, eps=EPS, norm="l2", steps=steps, step_size=EPS / 2, random_start=random_start,
                generator=torch.Generator().manual_seed(0))
    assert (x_adv - expected).flatten(1).norm(dim=1).max() <= tol * EPS


def test_fgsm_l2_direction() -> None:
    model = LinearClassifier()
    x = interior_inputs(3)
    y = model(x).argmax(1)
    d = (model.weight[1 - y] - model.weight[y]).detach()
    expected = x + EPS * (d / d.norm(dim=1, keepdim=True)).view_as(x)
    assert torch.allclose(fgsm(model, x, y, eps=EPS, norm="l2"), expected, atol=1e-6)


@pytest.mark.parametrize("attack", [pgd, cw])
def test_targeted_reaches_feasible_target(attack) -> None:
    model = LinearClassifier(num_classes=4, seed=1)
    x = interior_inputs(8, seed=1)
    target = (model(x).argmax(1) + 1) % 4
    x_adv = attack(model, x, target, eps=0.3, steps=40, step_size=0.02, targeted=True,
                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x_adv).argmax(1), target)
    assert (x_adv - x).abs().amax() <= 0.3 + 1e-6


def test_breakable_samples_return_adversarial() -> None:
    model = LinearClassifier()
    x = interior_inputs(8)
    y = model(x).argmax(1)
    x_adv = pgd(model, x, y, eps=1.0, steps=20, step_size=0.1, generator=torch.Generator().manual_seed(0))
    assert (model(x_adv).argmax(1) != y).all()


# --- contract: ε-ball, box, shapes, mode, grads, determinism -----------------------------------


def edge_inputs(n: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    u = torch.rand((n, *shape), generator=g) * 0.05
    return torch.where(torch.rand((n, *shape), generator=g) < 0.5, u, 1 - u)


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("eps_kind", ["float", "tensor"])
def test_stays_in_ball_and_box(name: str, eps_kind: str) -> None:
    n = 8
    model = mlp()
    x = edge_inputs(n, (16,))
    y = torch.arange(n) % 3
    eps = torch.linspace(0.0, 0.3, n) if eps_kind == "tensor" else EPS
    eps_t = torch.as_tensor(eps).expand(n)
    kw = {} if name.startswith("fgsm") else {"generator": torch.Generator().manual_seed(0)}
    x_adv = ATTACKS[name](model, x, y, eps=eps, **kw)
    delta = (x_adv - x).flatten(1)
    size = delta.norm(dim=1) if "l2" in name else delta.abs().amax(dim=1)
    assert (size <= eps_t * (1 + 1e-5) + 1e-7).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert x_adv.shape == x.shape and not x_adv.requires_grad


@pytest.mark.parametrize("name", list(ATTACKS))
def test_eps_zero_returns_x(name: str) -> None:
    model = mlp()
    x = interior_inputs(3, (16,))
    x_adv = ATTACKS[name](model, x, torch.tensor([0, 1, 2]), eps=0.0)
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("training", [True, False])
def test_mode_and_grads_untouched(name: str, training: bool) -> None:
    model = mlp(dropout=0.2)
    model.train(training)
    probe = model[4]
    x = interior_inputs(4, (16,))
    ATTACKS[name](model, x, torch.tensor([0, 1, 2, 0]), eps=EPS)
    assert all(m.training == training for m in model.modules())
    assert probe.seen == {training}
    assert no_grads(model)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_works_under_no_grad(name: str) -> None:
    model = mlp()
    x = interior_inputs(4, (16,))
    y = torch.tensor([0, 1, 2, 0])
    kw = {} if name.startswith("fgsm") else {"generator": torch.Generator().manual_seed(0)}
    expected = ATTACKS[name](model, x, y, eps=EPS, **kw)
    with torch.no_grad():
        kw = {} if name.startswith("fgsm") else {"generator": torch.Generator().manual_seed(0)}
        got = ATTACKS[name](model, x, y, eps=EPS, **kw)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("shape", [(16,), (4, 4), (1, 4, 4)])
@pytest.mark.parametrize("attack", ["fgsm", "pgd", "cw"])
def test_batch_sizes_and_ranks(n: int, shape: tuple[int, ...], attack: str) -> None:
    model = LinearClassifier(in_shape=shape)
    x = interior_inputs(n, shape)
    y = model(x).argmax(1)
    if attack == "fgsm":
        x_adv = fgsm(model, x, y, eps=0.5)
    else:
        x_adv = {"pgd": pgd, "cw": cw}[attack](model, x, y, eps=0.5, steps=10, step_size=0.1)
    assert x_adv.shape == x.shape
    assert (model(x_adv).argmax(1) != y).all()  # eps 0.5 breaks every sample of this model


def test_deterministic_with_generator() -> None:
    model = mlp()
    x = interior_inputs(8, (16,))
    y = torch.arange(8) % 3
    runs = [pgd(model, x, y, eps=EPS, steps=3, restarts=2, generator=torch.Generator().manual_seed(s))
            for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_bad_arguments_raise_user_error() -> None:
    model = mlp()
    x = interior_inputs(2, (16,))
    y = torch.tensor([0, 1])
    for kw in ({"norm": "l3"}, {"eps": -0.1}, {"eps": torch.ones(3)}, {"steps": -1}, {"restarts": 0},
               {"loss": "nope"}):
        with pytest.raises(UserError):
            pgd(model, x, y, **{"eps": EPS, **kw})
    with pytest.raises(UserError):
        pgd(model, x, torch.tensor([0]), eps=EPS)
    with pytest.raises(UserError):
        cw(model, x, y, eps=EPS, kappa=-1.0)


# --- restarts -----------------------------------------------------------------------------------


def test_restarts_never_lower_success() -> None:
    model = mlp(k=3, seed=2)
    x = interior_inputs(64, (16,), seed=2)
    y = model(x).argmax(1)
    broken = {}
    for r in (1, 3):
        x_adv = pgd(model, x, y, eps=0.03, steps=2, step_size=0.01, restarts=r,
                    generator=torch.Generator().manual_seed(0))
        broken[r] = model(x_adv).argmax(1) != y
    assert 0 < broken[1].sum() < 64  # the comparison is informative
    assert not (broken[1] & ~broken[3]).any()  # per sample: restarts only add breaks
    assert broken[3].sum() > broken[1].sum()


def mixed_linear(n_robust: int, n_broken: int) -> tuple[LinearClassifier, torch.Tensor, torch.Tensor]:
    """Samples with label 0 are never broken at eps 0.1, samples with label 1 are already misclassified."""
    model, x, _ = robust_linear(n_robust + n_broken)
    y = torch.cat([torch.zeros(n_robust), torch.ones(n_broken)]).long()
    return model, x, y


@pytest.mark.parametrize(("attack", "restarts"), [(pgd, 1), (pgd, 3), (cw, 2)])
def test_count_formula(attack, restarts: int) -> None:
    """Per attempt: a sample first successful at iterate k < steps costs k+1 forwards and k+1
    backwards; a sample never successful costs steps+1 forwards and steps backwards; restarts
    re-attack survivors only. Here k = 0 for the misclassified samples."""
    steps, r, b = 7, 5, 3
    model, x, y = mixed_linear(r, b)
    with count_passes(model) as c:
        x_adv = attack(model, x, y, eps=EPS, steps=steps, step_size=0.02, restarts=restarts,
                       generator=torch.Generator().manual_seed(0))
    assert c.forward == b * 1 + r * (steps + 1) * restarts
    assert c.backward == b * 1 + r * steps * restarts
    assert (model(x_adv).argmax(1) == 0).all()


def test_count_formula_with_breaks_along_the_way() -> None:
    """No random start, margin loss, L∞ steps of 0.01 that never reach the ball's edge: on a 2-class
    linear model the margin after k steps is exactly m + k * 0.01 * ‖w_o - w_y‖_1, so each sample's
    first successful iterate k_i is known and the counts are sum(min(k_i + 1, steps + 1)) forwards and
    sum(min(k_i + 1, steps)) backwards."""
    steps, alpha = 10, 0.01
    model = LinearClassifier().double()
    x = interior_inputs(32).double()
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    m = (z[:, 1] - z[:, 0]).abs().neg()  # z_o - z_y < 0
    l1 = (model.weight[1] - model.weight[0]).abs().sum().detach()
    grid = m[:, None] + torch.arange(steps + 1, dtype=m.dtype)[None] * alpha * l1
    assert grid.abs().min() > 1e-6  # no ties at the decision boundary
    hit = grid > 0
    k = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(y, steps + 1))
    assert 0 < (k <= steps).sum() < 32 and len(set(k.tolist())) > 3  # mixed break times
    with count_passes(model) as c:
        x_adv = pgd(model, x, y, eps=EPS, steps=steps, step_size=alpha, loss="margin", random_start=False)
    assert c.forward == int((k + 1).clamp_max(steps + 1).sum())
    assert c.backward == int((k + 1).clamp_max(steps).sum())
    delta = (x_adv - x).flatten(1).abs().amax(1)
    assert torch.allclose(delta, alpha * k.clamp_max(steps).double())  # first successful iterate kept
    assert torch.equal(model(x_adv).argmax(1) != y, k <= steps)


def test_restarts_attack_only_survivors() -> None:
    model = mlp(k=3, seed=2)
    x = interior_inputs(64, (16,), seed=2)
    y = model(x).argmax(1)
    counts = []
    for r in (1, 2):
        with count_passes(model) as c:
            pgd(model, x, y, eps=0.03, steps=2, step_size=0.01, restarts=r, generator=torch.Generator().manual_seed(0))
        counts.append(c.forward)
    full_attempt = 64 * (2 + 1)
    assert counts[0] <= full_attempt
    assert counts[1] - counts[0] < full_attempt  # the second attempt skipped the broken samples


def test_fgsm_count() -> None:
    model = mlp()
    with count_passes(model) as c:
        fgsm(model, interior_inputs(5, (16,)), torch.zeros(5, dtype=torch.long), eps=EPS)
    assert (c.forward, c.backward) == (5, 5)


# --- counting utilities -------------------------------------------------------------------------


def test_count_passes_removes_hooks_and_counts_shared_inputs_once() -> None:
    model = mlp()
    x = interior_inputs(4, (16,)).requires_grad_(True)
    with count_passes(model) as c:
        out = model(x).sum() + model(x).sum()  # two forwards of one tensor, one gradient for it
        torch.autograd.grad(out, x)
        with torch.no_grad():
            model(x[:2])
        model(torch.zeros(3, 16)).sum().backward()  # input gradient not computed: not counted
    assert (c.forward, c.backward) == (13, 4)
    assert not model._forward_pre_hooks
    model.zero_grad(set_to_none=True)
    torch.autograd.grad(model(x).sum(), x)
    assert (c.forward, c.backward) == (13, 4)  # nothing counted after exit


def test_count_passes_removes_hooks_on_error() -> None:
    model = mlp()
    with pytest.raises(RuntimeError), count_passes(model):
        raise RuntimeError("boom")
    assert not model._forward_pre_hooks


def test_stopwatch_cpu() -> None:
    with Stopwatch() as sw:
        assert sw.seconds != sw.seconds  # NaN while running
        torch.ones(10).sum()
    assert 0.0 <= sw.seconds < 5.0


def test_training_mode_pgd_takes_every_step_and_returns_the_last_iterate() -> None:
    """early_stop=False: exactly `steps` forwards and backwards per sample, no checks, last iterate."""
    from toy_models import LinearClassifier, interior_inputs

    from robustlab.attacks.counting import count_passes
    from robustlab.attacks.pgd import pgd

    model = LinearClassifier(num_classes=2)
    x = interior_inputs(5)
    y = model(x).argmax(1)
    with count_passes(model) as passes:
        x_adv = pgd(model, x, y, eps=0.1, steps=7, step_size=0.05, random_start=False, early_stop=False)
    assert (passes.forward, passes.backward) == (35, 35)
    w = model.weight.detach()
    direction = torch.stack([(w[1 - int(c)] - w[int(c)]).sign() for c in y]).view_as(x)
    torch.testing.assert_close(x_adv, x + 0.1 * direction)


def test_x_init_replaces_the_random_start() -> None:
    from toy_models import LinearClassifier, interior_inputs

    from robustlab.attacks.pgd import pgd

    model = LinearClassifier(num_classes=2)
    x = interior_inputs(4)
    y = model(x).argmax(1)
    start = x + 0.01
    out = pgd(model, x, y, eps=0.1, steps=0, x_init=start, early_stop=False)
    torch.testing.assert_close(out, start)
