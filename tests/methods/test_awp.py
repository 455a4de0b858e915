"""AWP (Wu et al. 2020): relative per-layer perturbation, the step it yields, composition, warm-up."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks._common import eval_mode
from robustlab.attacks.pgd import pgd
from robustlab.config import AttackConfig, MethodConfig
from robustlab.errors import UserError
from robustlab.methods import create_method, method_names
from robustlab.models import create_model

ATTACK = AttackConfig(eps=0.1, steps=2, step_size=0.05)


def _net() -> nn.Module:
    """Conv + linear with biases, no batch norm: the expected step can be written out by hand."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """What the trainer hands ``before_step``; AWP only restores its weights there and never steps it."""
    return torch.optim.SGD(model.parameters(), lr=0.0)


def _method(name: str, **options: object) -> object:
    return create_method(MethodConfig(name=name, attack=ATTACK, options=dict(options)),
                         torch.Generator().manual_seed(5))


def test_perturbation_has_relative_size_gamma_per_layer_and_is_undone() -> None:
    model, (x, y) = _net(), _batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = _method("pgd_at+awp", gamma=0.01)
    loss, _ = method.loss(model, x, y)
    for name, p in model.named_parameters():
        ratio = ((p.detach() - before[name]).norm() / before[name].norm()).item()
        if p.ndim > 1:
            assert ratio == pytest.approx(0.01, rel=1e-4), name
        else:  # biases are not perturbed
            assert ratio == 0.0, name
    loss.backward()
    method.before_step(_optimizer(model))
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name


def _perturbed_gradient(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, gamma: float) -> list[torch.Tensor]:
    """By hand: g = ∇CE(x') at w, v_l = γ‖w_l‖ g_l/‖g_l‖ on weights, gradient of CE(x') at w + v."""
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x_adv), y), params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            if p.ndim > 1:
                p.add_(gamma * p.norm() * g / g.norm())
    return list(torch.autograd.grad(F.cross_entropy(model(x_adv), y), params))


def test_step_equals_an_optimiser_step_with_the_gradient_at_the_perturbed_weights() -> None:
    model, (x, y) = _net(), _batch()
    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    method = _method("pgd_at+awp")
    for _ in range(2):  # the second step also exercises momentum from a restored w
        loss, _ = method.loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        method.before_step(opt)
        opt.step()

    # The same two steps by hand: x' from the same seeded PGD at w, gradient at w + v, step from w.
    generator = torch.Generator().manual_seed(5)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    plain = copy.deepcopy(reference)
    for _ in range(2):
        with eval_mode(reference):
            x_adv = pgd(reference, x, y, eps=0.1, steps=2, step_size=0.05, random_start=True, early_stop=False,
                        generator=generator)
        saved = [p.detach().clone() for p in reference.parameters()]
        grads = _perturbed_gradient(reference, x_adv, y, 5e-3)
        with torch.no_grad():
            for p, w, g in zip(reference.parameters(), saved, grads):
                p.copy_(w)
                p.grad = g
        ref_opt.step()
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # ... and it is not PGD-AT's step (the perturbation matters at this γ).
    plain_method, plain_opt = _method("pgd_at"), torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9,
                                                                 weight_decay=5e-4)
    for _ in range(2):
        loss, _ = plain_method.loss(plain, x, y)
        plain_opt.zero_grad()
        loss.backward()
        plain_opt.step()
    diff = max((a - b).abs().max().item() for a, b in zip(model.parameters(), plain.parameters()))
    assert diff > 1e-5


@pytest.mark.parametrize("eps", [0.1, 0.0])  # eps 0: nothing crafted, the generator is rewound by hand
def test_second_pass_replays_x_adv_and_random_draws(eps: float) -> None:
    """pgd_at+fsr+awp: the loss at w+v sees the same x' and mask noise; the generator advances once."""
    attack = AttackConfig(eps=eps, steps=2, step_size=0.05)
    model = create_method(MethodConfig(name="pgd_at+fsr", attack=ATTACK), torch.Generator()).prepare_model(
        create_model("small_cnn", num_classes=3, in_channels=1))
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 3, (6,))
    base = create_method(MethodConfig(name="pgd_at+fsr", attack=attack), torch.Generator().manual_seed(5))
    stacked = create_method(MethodConfig(name="pgd_at+fsr+awp", attack=attack, options={"gamma": 1e-12}),
                            torch.Generator().manual_seed(5))  # γ tiny: both passes run, the loss barely moves
    buffers = [b.clone() for b in model.buffers()]
    base_loss, _ = base.loss(model, x, y)
    for b, saved in zip(model.buffers(), buffers):
        b.copy_(saved)
    awp_loss, _ = stacked.loss(model, x, y)
    stacked.before_step(_optimizer(model))
    assert awp_loss.item() == pytest.approx(base_loss.item(), rel=1e-5)
    assert torch.equal(stacked.generator.get_state(), base.generator.get_state())


def test_ascent_pass_leaves_batch_norm_statistics_alone() -> None:
    """The running statistics are updated once per step (by the forward at w + v), as with a proxy model."""
    model = create_model("small_cnn", num_classes=3, in_channels=1).train()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 3, (6,))
    plain = copy.deepcopy(model)
    _method("pgd_at").loss(plain, x, y)
    method = _method("pgd_at+awp")
    method.loss(model, x, y)
    method.before_step(_optimizer(model))
    counts = [(n, b) for n, b in model.named_buffers() if n.endswith("num_batches_tracked")]
    assert counts and all(b.item() == 1 for _, b in counts)
    assert all(b.item() == 1 for n, b in plain.named_buffers() if n.endswith("num_batches_tracked"))


def test_warmup_epochs_skip_the_perturbation() -> None:
    model, (x, y) = _net(), _batch()
    before = [p.detach().clone() for p in model.parameters()]
    method = _method("trades+awp", awp_warmup=1)
    method.start_epoch(0)
    method.loss(model, x, y)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    method.start_epoch(1)
    method.loss(model, x, y)
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    method.before_step(_optimizer(model))


@pytest.mark.parametrize("name", ["pgd_at+awp+fsr", "natural+awp", "pgd_at+awp+awp"])
def test_unsupported_compositions_are_user_errors(name: str) -> None:
    with pytest.raises(UserError):
        _method(name)


@pytest.mark.parametrize("name", [n for n in method_names() if n.endswith("+awp")])
def test_every_listed_awp_composition_trains_a_step_and_restores(name: str) -> None:
    method = create_method(MethodConfig(name=name, attack=AttackConfig(eps=0.1, steps=1, step_size=0.1)),
                           torch.Generator().manual_seed(0))
    model = method.prepare_model(create_model("small_cnn", num_classes=3, in_channels=1, width=4)).train()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6) % 3
    loss, _ = method.loss(model, x, y)
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))  # perturbed meanwhile
    loss.backward()
    method.before_step(_optimizer(model))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(p.grad is not None for p in model.parameters() if p.ndim > 1)


def test_trades_records_its_attack_as_one_tape_entry_and_replays_it() -> None:
    model, (x, y) = _net(), _batch()
    base, stacked = _method("trades"), _method("trades+awp", gamma=1e-12)
    base_loss, _ = base.loss(model, x, y)
    awp_loss, _ = stacked.loss(model, x, y)
    stacked.before_step(_optimizer(model))
    assert len(stacked.tape.items) == 1  # reference forward + craft: one recorded call, not two
    assert awp_loss.item() == pytest.approx(base_loss.item(), rel=1e-5)
    assert torch.equal(stacked.generator.get_state(), base.generator.get_state())
