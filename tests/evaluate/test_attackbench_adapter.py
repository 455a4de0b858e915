"""The AttackBench adapter (robustlab.evaluate.attackbench), without AttackBench installed: its signature is the one
AttackBench's harness calls, its ε search follows AttackBench's schedule step by step, and on linear models (whose
smallest L∞ adversarial perturbation is analytic) the search ends at the optimum, per sample."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from robustlab.errors import UserError
from robustlab.evaluate.attackbench import EpsSearch, fixed_eps_attack, min_norm_attack

# Two classes: z = W x + b. For a sample of class y the smallest L∞ perturbation that flips it is
# (z_y - z_other) / ||w_y - w_other||_1, reached at the corner x + d sign(w_other - w_y) (inside [0, 1] here).
W = torch.tensor([[1.0, -2.0, 0.5, 1.5], [-1.0, 1.0, 2.0, -0.5]])
GAP_NORM = float((W[0] - W[1]).abs().sum())  # 9.0


def linear_model() -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(W)
        model[1].bias.zero_()
    return model.eval()


def samples(distances: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images at 0.5 shifted along w_0 - w_1 so that each sample (class 0) lies ``d`` from the boundary."""
    direction = (W[0] - W[1]).sign()
    d = torch.tensor(distances)
    # z_0 - z_1 at 0.5 + t sign(w0 - w1) is 0.5 sum(w0 - w1) + t ||w0 - w1||_1
    base = 0.5 * float((W[0] - W[1]).sum())
    t = (d * GAP_NORM - base) / GAP_NORM
    x = (0.5 + t[:, None] * direction[None]).view(-1, 1, 2, 2)
    assert x.min() > d.max() and x.max() < 1 - d.max()  # the optimal corner lies inside [0, 1]
    return x, torch.zeros(len(distances), dtype=torch.long), d


def linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().amax(1)


def test_the_signature_is_the_one_attackbench_calls():
    # attackbench.run._call_attack passes model, inputs, labels, and targeted/targets when named, nothing else
    attack = min_norm_attack("apgd-ce")
    assert list(inspect.signature(attack).parameters) == ["model", "inputs", "labels", "targets", "targeted"]
    x, y, _ = samples([0.05])
    with pytest.raises(UserError, match="untargeted"):
        attack(model=linear_model(), inputs=x, labels=y, targeted=True, targets=y)


def test_attacks_with_a_step_size_in_pixels_are_refused():
    with pytest.raises(UserError, match="step size in pixels"):
        min_norm_attack("pgd-20")
    with pytest.raises(UserError, match="unknown attack"):
        fixed_eps_attack("bim", eps=0.1)


def test_the_search_schedule_is_attackbenchs():
    # threshold 0.1: doubling from 1/255 fails up to 16/255, succeeds at 32/255, then bisects
    search = EpsSearch.start(1, 1 / 255, 1.0, torch.device("cpu"))
    tried = []
    for _ in range(11):
        tried.append(round(float(search.eps) * 255, 4))
        search.update(search.eps >= 0.1)
    assert tried == [1, 2, 4, 8, 16, 32, 24, 28, 26, 25, 25.5]
    # never successful: doubling stops below twice the maximum, then bisects towards it
    search = EpsSearch.start(1, 1 / 255, 1.0, torch.device("cpu"))
    for _ in range(9):
        search.update(torch.tensor([False]))
    assert float(search.low) == pytest.approx(256 / 255)
    assert float(search.eps) == pytest.approx((256 / 255 + 2) / 2)
    assert not bool(search.found)


@pytest.mark.parametrize("name", ["apgd-ce", "fast"])
def test_the_search_ends_at_the_analytic_optimum_per_sample(name):
    model = linear_model()
    x, y, optimum = samples([0.02, 0.08, 0.15])
    before = x.clone()
    adv = min_norm_attack(name)(model=model, inputs=x, labels=y, targets=None, targeted=False)
    assert torch.equal(x, before)  # AttackBench hashes its inputs: the attack must not write into them
    assert (model(adv).argmax(1) != y).all()
    found = linf(adv, x)
    assert (found >= optimum - 1e-5).all()  # no point beats the optimum
    assert torch.allclose(found, optimum, rtol=1e-3), (found, optimum)
    assert adv.min() >= 0 and adv.max() <= 1


def test_a_fixed_budget_breaks_exactly_the_samples_within_reach():
    model = linear_model()
    x, y, optimum = samples([0.05, 0.2])
    adv = fixed_eps_attack("apgd-ce", eps=0.1)(model=model, inputs=x, labels=y)
    assert (model(adv).argmax(1) != y).tolist() == [True, False]
    assert linf(adv, x)[0] <= 0.1 + 1e-6
    assert torch.equal(adv[1], x[1])  # a sample not broken comes back as its input


def test_clean_wrong_samples_come_back_unchanged():
    model = linear_model()
    x, _, _ = samples([0.05])
    wrong = torch.ones(1, dtype=torch.long)  # the model says 0
    assert torch.equal(min_norm_attack("apgd-ce", search_steps=3)(model=model, inputs=x, labels=wrong), x)


def test_the_search_is_repeatable():
    model = linear_model()
    x, y, _ = samples([0.07, 0.15])
    attack = min_norm_attack("apgd-ce", search_steps=4, seed=3)
    again = min_norm_attack("apgd-ce", search_steps=4, seed=3)
    assert torch.equal(attack(model=model, inputs=x, labels=y), again(model=model, inputs=x, labels=y))


class SpentHarness(nn.Module):
    """A stand-in for AttackBench's BenchModel: counts forwards in ``num_forwards`` and, past ``budget`` of them,
    answers without counting, with made-up logits that name a wrong class (as its nearest-original answers can)."""

    def __init__(self, model: nn.Module, budget: int) -> None:
        super().__init__()
        self.model, self.budget = model, budget
        self.num_forwards = torch.zeros(1, dtype=torch.long)
        self.unanswered = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if int(self.num_forwards.sum()) < self.budget:
            self.num_forwards += 1
            return self.model(x)
        self.unanswered += 1
        return (x.flatten(1)[:, :1] * 0 + torch.tensor([-1.0, 1.0])).expand(len(x), 2)


@pytest.mark.parametrize("name", ["apgd-ce", "fast"])
def test_the_search_stops_when_the_harness_stops_answering(name):
    x, y, _ = samples([0.15])
    harness = SpentHarness(linear_model(), budget=30)  # spent before the search reaches 0.15 (step 6)
    adv = min_norm_attack(name)(model=harness, inputs=x, labels=y)
    assert harness.unanswered == 1  # the first forward without an answer ends the search
    assert torch.equal(adv, x)  # nothing found within the budget, and no made-up break returned
    fixed = fixed_eps_attack(name, eps=0.2)
    harness = SpentHarness(linear_model(), budget=1)  # only the clean forward is answered
    assert torch.equal(fixed(model=harness, inputs=x, labels=y), x)
    assert harness.unanswered == 1


def test_the_models_modes_are_left_as_they_were():
    # a model in eval mode stays there (the adapter's wrapper is made in train mode), and a frozen batch norm in a
    # training model stays frozen: eval_mode restores each submodule's own mode
    x, y, _ = samples([0.05])
    model = linear_model()
    min_norm_attack("apgd-ce", search_steps=2)(model=model, inputs=x, labels=y)
    assert not any(m.training for m in model.modules())
    mixed = nn.Sequential(nn.BatchNorm2d(1), linear_model()).train()
    mixed[0].eval()
    fixed_eps_attack("apgd-ce", eps=0.1)(model=mixed, inputs=x, labels=y)
    assert [m.training for m in mixed.modules()] == [True, False, True, True, True]
