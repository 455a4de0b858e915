"""FAB / FAB-T (Croce & Hein, ICML 2020): analytic optima on linear models, a small digits model, contracts."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from toy_models import LinearClassifier, interior_inputs

from robustlab.attacks.fab import _fab, _project_box_hyperplane, fab, fab_targeted
from robustlab.errors import UserError


def _lp(v: torch.Tensor, norm: str) -> torch.Tensor:
    v = v.flatten(1)
    return v.abs().amax(1) if norm == "linf" else v.norm(dim=1)


def _linear_optimum(model: LinearClassifier, x: torch.Tensor, y: torch.Tensor, norm: str):
    """Minimal L_p distance to misclassification of a linear model (no box): min over o != y of
    margin / ‖w_y - w_o‖_q, and whether that optimal point stays inside [0,1]."""
    w, b = model.weight.detach(), model.bias.detach()
    xf = x.flatten(1)
    best = torch.full((x.shape[0],), float("inf"))
    inside = torch.ones(x.shape[0], dtype=torch.bool)
    for o in range(w.shape[0]):
        wd = w[o] - w[y]  # (N, D): gradient of z_o - z_y
        gap = (z := xf @ w.t() + b).gather(1, y[:, None]).squeeze(1) - z[:, o]
        q = wd.abs().sum(1) if norm == "linf" else wd.norm(dim=1)
        dist = torch.where(y == o, torch.full_like(gap, float("inf")), gap / q)
        step = wd.sign() if norm == "linf" else wd / q[:, None]
        ok = ((xf + dist[:, None] * step) >= 0).all(1) & ((xf + dist[:, None] * step) <= 1).all(1)
        take = dist < best
        best = torch.where(take, dist, best)
        inside = torch.where(take, ok, inside)
    return best, inside


def _labelled(model: nn.Module, n: int, shape: tuple[int, ...], seed: int = 0):
    x = interior_inputs(n, shape, seed=seed)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape", [(16,), (4, 4), (1, 4, 4)])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_two_class_linear_matches_analytic_optimum(norm: str, shape: tuple[int, ...], n: int) -> None:
    model = LinearClassifier(shape, num_classes=2, seed=1)
    x, y = _labelled(model, n, shape, seed=n)
    opt, inside = _linear_optimum(model, x, y, norm)
    assert inside.all()  # the analytic optimum ignores the box: keep it away from it
    x_best, norms = _fab(model, x, y, eps=0.0, norm=norm, steps=30, n_target_classes=1)
    assert (norms >= opt * (1 - 1e-4)).all() and (norms <= opt * 1.01).all()
    assert torch.allclose(_lp(x_best - x, norm), norms, atol=1e-6)
    with torch.no_grad():
        assert (model(x_best).argmax(1) != y).all()
    for attack in (functools.partial(fab_targeted, n_target_classes=1), fab):
        x_adv = attack(model, x, y, eps=opt * 1.02, norm=norm, steps=30)
        with torch.no_grad():
            assert (model(x_adv).argmax(1) != y).all()
        assert (_lp(x_adv - x, norm) <= opt * 1.02).all()
        assert torch.equal(attack(model, x, y, eps=opt * 0.98, norm=norm, steps=30), x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_targeted_four_class_linear(norm: str) -> None:
    model = LinearClassifier((16,), num_classes=4, seed=3)
    with torch.no_grad():
        model.bias.copy_(-0.5 * model.weight.sum(1))  # logits W(x - 0.5): every class occurs
    x, y = _labelled(model, 8, (16,), seed=5)
    assert len(set(y.tolist())) >= 3
    opt, inside = _linear_optimum(model, x, y, norm)
    assert inside.all()
    _, norms = _fab(model, x, y, eps=0.0, norm=norm, steps=30, n_target_classes=3)
    assert (norms >= opt * (1 - 1e-4)).all() and (norms <= opt * 1.01).all()
    # One target (the top non-true logit): no better than the optimum, no worse than that boundary.
    with torch.no_grad():
        z = model(x)
    top = z.scatter(1, y[:, None], float("-inf")).argmax(1)
    wd = model.weight.detach()[top] - model.weight.detach()[y]
    gap = z.gather(1, y[:, None]).squeeze(1) - z.gather(1, top[:, None]).squeeze(1)
    d_top = gap / (wd.abs().sum(1) if norm == "linf" else wd.norm(dim=1))
    _, norms1 = _fab(model, x, y, eps=0.0, norm=norm, steps=30, n_target_classes=1)
    assert (norms1 >= opt * (1 - 1e-4)).all() and (norms1 <= d_top * 1.01).all()
    x_adv = fab_targeted(model, x, y, eps=opt * 1.02, norm=norm, steps=30, n_target_classes=3)
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_exact_in_interior_and_respects_box(norm: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 10, generator=g, dtype=torch.float64)
    w = torch.randn(64, 10, generator=g, dtype=torch.float64)
    rho = torch.randn(64, generator=g, dtype=torch.float64)
    delta = _project_box_hyperplane(x, w, rho, norm)
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    reach = torch.where(w * -rho[:, None] > 0, torch.where(w > 0, 1 - x, -x), torch.where(w > 0, -x, 1 - x))
    feasible = (w * reach).sum(1).abs() >= rho.abs()
    assert torch.allclose((w * delta).sum(1)[feasible], -rho[feasible])
    # Without the box the L∞ / L2 projections are closed-form.
    big = _project_box_hyperplane(x * 0 + 0.5, w * 1e3, rho, norm)
    unit = w.sign() / w.abs().sum(1, keepdim=True) if norm == "linf" else w / w.norm(dim=1, keepdim=True) ** 2
    free = -rho[:, None] * unit
    assert torch.allclose(big, free * 1e-3)


@pytest.fixture(scope="module")
def digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data, target = load_digits(return_X_y=True)
    x = torch.tensor(data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(target)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        idx = torch.randint(0, 1500, (128,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().zero_grad(set_to_none=True)
    return model, x[1500:1564], y[1500:1564]


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 2.0)])
def test_digits_undefended_model_is_broken(digits_model, norm: str, eps: float) -> None:
    model, x, y = digits_model
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.8
    x_best, norms = _fab(model, x, y, eps=eps, norm=norm, steps=50, n_target_classes=9)
    assert norms.median() < eps
    x_adv = fab_targeted(model, x, y, eps=eps, norm=norm, steps=50)
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).float().mean()
    assert robust < 0.1
    assert (_lp(x_adv - x, norm) <= eps * (1 + 1e-6)).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_restarts_never_lower_success_and_are_deterministic(digits_model) -> None:
    model, x, y = digits_model
    run = functools.partial(fab_targeted, model, x, y, eps=0.06, steps=3, n_target_classes=2)
    once = run(restarts=1, generator=torch.Generator().manual_seed(1))
    a = run(restarts=3, generator=torch.Generator().manual_seed(1))
    b = run(restarts=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with torch.no_grad():
        broken_once, broken_more = model(once).argmax(1) != y, model(a).argmax(1) != y
    assert (broken_more | ~broken_once).all()
    assert ((a - x).abs().flatten(1).amax(1) <= 0.06 + 1e-6).all()
    # Restarts from random points in the shrinking ball do run on the survivors and can only improve.
    _, n1 = _fab(model, x, y, eps=0.06, steps=3, n_target_classes=1, restarts=1)
    gen = torch.Generator().manual_seed(1)
    _, n8 = _fab(model, x, y, eps=0.06, steps=3, n_target_classes=1, restarts=8, generator=gen)
    assert (n8 <= n1).all() and (n8 < n1).any()


@pytest.mark.parametrize("training", [True, False])
def test_mode_unchanged_no_param_grads_under_no_grad(training: bool) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.0), nn.Linear(8, 3))
    model.train(training)
    x = interior_inputs(3, (1, 4, 4))
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():
        fab_targeted(model, x, y, eps=0.1, steps=3)
        fab(model, x, y, eps=0.5, norm="l2", steps=3)
    assert model.training is training
    assert all(p.grad is None for p in model.parameters())


def test_per_sample_eps_and_clean_errors() -> None:
    model = LinearClassifier((16,), num_classes=2, seed=1)
    x, y = _labelled(model, 4, (16,))
    y = y.clone()
    y[0] = 1 - y[0]  # a clean error: returned unchanged, norm 0
    eps = torch.tensor([0.3, 0.3, 0.0, 0.3])
    x_best, norms = _fab(model, x, y, eps=eps, steps=20, n_target_classes=1)
    assert norms[0] == 0 and torch.equal(x_best[0], x[0])
    x_adv = fab_targeted(model, x, y, eps=eps, steps=20)
    assert torch.equal(x_adv[:1], x[:1]) and torch.equal(x_adv[2], x[2])
    assert (_lp(x_adv - x, "linf") <= eps + 1e-6).all()


@pytest.mark.parametrize(
    "kwargs",
    [{"norm": "l1"}, {"steps": 0}, {"restarts": 0}, {"n_target_classes": 0}, {"beta": 1.0}, {"eps": -0.1},
     {"eps": float("inf")}, {"eps": torch.ones(2)}],
)
def test_bad_arguments_raise_user_error(kwargs: dict) -> None:
    model = LinearClassifier((16,), num_classes=2)
    x, y = _labelled(model, 3, (16,))
    with pytest.raises(UserError):
        fab_targeted(model, x, y, **{"eps": 0.1, **kwargs})


def test_final_search_shortens_and_stays_adversarial(digits_model) -> None:
    model, x, y = digits_model
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    for norm in ("linf", "l2"):
        x0, n0 = _fab(model, x, y, eps=0.0, norm=norm, steps=10, n_target_classes=1, final_search=0)
        x3, n3 = _fab(model, x, y, eps=0.0, norm=norm, steps=10, n_target_classes=1, final_search=3)
        assert torch.equal(n3, _fab(model, x, y, eps=0.0, norm=norm, steps=10, n_target_classes=1)[1])  # the default
        found = torch.isfinite(n0)
        assert found.sum() > 10 and torch.equal(found, torch.isfinite(n3))
        assert (n3 <= n0).all() and (n3[found] < n0[found]).float().mean() > 0.5
        torch.testing.assert_close(_lp(x3 - x, norm)[found], n3[found])
        with torch.no_grad():
            assert (model(x3[found]).argmax(1) != y[found]).all()
        # on the segment from x to the point found without it
        direction = (x3 - x)[found].flatten(1)
        torch.testing.assert_close(direction, (x0 - x)[found].flatten(1) * (n3 / n0)[found, None], atol=1e-5, rtol=1e-4)


class _Rows(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.6)])
def test_compaction_keeps_verdicts_and_saves_work(digits_model, norm: str, eps: float) -> None:
    model, x, y = digits_model
    verdicts, rows = [], []
    for compact in (True, False):
        counted = _Rows(model)
        x_adv = fab_targeted(counted, x, y, eps=eps, norm=norm, steps=20, n_target_classes=3, compact=compact,
                             generator=torch.Generator().manual_seed(0))
        assert (_lp(x_adv - x, norm) <= eps * (1 + 1e-5)).all()
        with torch.no_grad():
            verdicts.append(model(x_adv).argmax(1) == y)
        rows.append(counted.rows)
    assert torch.equal(verdicts[0], verdicts[1]) and 0 < verdicts[0].sum() < x.shape[0] - 10
    assert rows[0] < 0.9 * rows[1]


def test_fab_t_tries_nine_targets_here_and_in_the_suite() -> None:
    """Only the 10th-ranked class (9th target) has a boundary within eps: one target, or eight, miss it."""
    from robustlab.evaluate.suite import build_attack

    model = LinearClassifier((16,), num_classes=10, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1:9] = 0.05 * torch.randn(8, 16, generator=g)
        model.weight[9] = torch.tensor([1.0, -1.0] * 8)  # zero logit at x = 0.5, steep: close in L∞
        model.bias.copy_(torch.tensor([0.0, -1.0, -1.1, -1.2, -1.3, -1.4, -1.5, -1.6, -1.7, -3.0]))
    x = torch.full((1, 16), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    assert model(x).argmax(1).item() == 0 and model(x)[0].argsort(descending=True)[-1].item() == 9

    def broken(x_adv: torch.Tensor) -> bool:
        with torch.no_grad():
            return bool(model(x_adv).argmax(1).item() != 0)

    eps = 0.25  # the boundary with class 9 is at 3/16 in L∞; every other one is beyond 0.5
    assert not broken(fab_targeted(model, x, y, eps=eps, steps=10, n_target_classes=8))
    assert broken(fab_targeted(model, x, y, eps=eps, steps=10))
    spec = build_attack("fab-t", eps=eps, norm="linf", step_size=0.0)
    assert (spec.fn.keywords["n_target_classes"] == 9
            and broken(spec.fn(model, x, y, steps=10, generator=torch.Generator())))
