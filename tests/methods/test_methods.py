"""Base objectives (METHODS.md §1) against hand-computed values, and their attack/mode contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.pgd import pgd
from robustlab.config import AttackConfig, MethodConfig
from robustlab.errors import UserError
from robustlab.methods import METHODS, create_method
from robustlab.methods.objectives import kl_per_sample, mart_terms, trades_terms

# One sample, two classes: clean logits (2, 0), adversarial logits (0, 1), label 0.
CLEAN = torch.tensor([[2.0, 0.0]])
ADV = torch.tensor([[0.0, 1.0]])
Y = torch.tensor([0])
P = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
Q = [1 / (1 + math.e), math.e / (1 + math.e)]
KL = P[0] * math.log(P[0] / Q[0]) + P[1] * math.log(P[1] / Q[1])


def test_kl_matches_hand_value() -> None:
    assert KL == pytest.approx(0.828725, abs=1e-6)
    assert kl_per_sample(CLEAN, ADV).item() == pytest.approx(KL, rel=1e-6)
    assert kl_per_sample(CLEAN, CLEAN).item() == pytest.approx(0.0, abs=1e-7)


def test_trades_matches_hand_value() -> None:
    total, parts = trades_terms(CLEAN, ADV, Y, beta=6.0)
    expected = -math.log(P[0]) + 6.0 * KL
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert parts["ce_clean"].item() == pytest.approx(-math.log(P[0]), rel=1e-6)


def test_mart_matches_hand_value() -> None:
    total, parts = mart_terms(CLEAN, ADV, Y, lam=6.0)
    bce = -math.log(Q[0]) - math.log(1 - Q[1])
    expected = bce + 6.0 * KL * (1 - P[0])
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert parts["bce_margin"].item() == pytest.approx(-math.log(1 - Q[1]), rel=1e-6)


def test_mart_margin_uses_largest_wrong_class() -> None:
    adv = torch.tensor([[0.0, 1.0, 3.0]])
    total, parts = mart_terms(adv, adv, torch.tensor([1]), lam=0.0)
    p = torch.softmax(adv, 1)[0]
    assert parts["bce_margin"].item() == pytest.approx(-math.log(1 - p[2].item()), rel=1e-6)
    assert total.item() == pytest.approx(-math.log(p[1].item()) - math.log(1 - p[2].item()), rel=1e-6)


class _BNNet(nn.Module):
    """A tiny BN model that records the mode of every forward (to check the attack's mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 3)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.fc(self.bn(x.flatten(1)))


def _method(name: str, eps: float = 0.1, bn_mode: str = "eval", **options: object):
    attack = AttackConfig(eps=eps, steps=3, step_size=0.05, bn_mode=bn_mode)
    return create_method(MethodConfig(name=name, attack=attack, options=dict(options)),
                         torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["natural", "pgd_at", "trades", "mart"])
def test_every_base_method_returns_finite_loss_and_trains_in_train_mode(name: str) -> None:
    model = _BNNet().train()
    x, y = torch.rand(6, 4), torch.randint(0, 3, (6,))
    loss, parts = _method(name).loss(model, x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.training
    assert model.modes[-1] is True  # the update's forward runs in train mode
    loss.backward()
    assert all(p.grad is not None for p in model.fc.parameters())
    assert all(not v.requires_grad for v in parts.values())


@pytest.mark.parametrize("bn_mode,expected", [("eval", False), ("train", True)])
def test_training_attack_runs_in_configured_bn_mode(bn_mode: str, expected: bool) -> None:
    model = _BNNet().train()
    _method("pgd_at", bn_mode=bn_mode).loss(model, torch.rand(5, 4), torch.randint(0, 3, (5,)))
    attack_modes = model.modes[:-1]
    assert attack_modes and all(m is expected for m in attack_modes)


def test_pgd_at_with_zero_eps_is_natural_training() -> None:
    model = _BNNet().eval()
    x, y = torch.rand(5, 4), torch.randint(0, 3, (5,))
    loss, _ = _method("pgd_at", eps=0.0).loss(model, x, y)
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)


def test_pgd_at_loss_is_ce_at_a_point_inside_the_ball() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    x, y = torch.rand(8, 4) * 0.5 + 0.25, torch.randint(0, 3, (8,))
    terms = _method("pgd_at", eps=0.1).terms(model, x, y, step=0)
    delta = terms.x_adv - x
    assert delta.abs().max() <= 0.1 + 1e-6 and terms.x_adv.min() >= 0 and terms.x_adv.max() <= 1
    # the loss is CE at that very point, per sample, and the point is a real ascent on CE
    ce_adv = F.cross_entropy(model(terms.x_adv), y, reduction="none")
    assert torch.allclose(terms.per_sample, ce_adv, atol=1e-6)
    assert (ce_adv > F.cross_entropy(model(x), y, reduction="none")).all()


def _linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()


def test_trades_attack_ascends_kl_from_a_small_gaussian_start() -> None:
    """x' = PGD on KL(P(x) ‖ P(x')) from x + 0.001·N(0, I), replayed by hand from the same generator."""
    model = _linear_model()
    x, y = torch.rand(8, 4) * 0.5 + 0.25, torch.randint(0, 3, (8,))
    method = _method("trades", eps=0.1)
    state = method.generator.get_state()
    x_adv = method.adversarial(model, x, y)
    noise = torch.randn(x.shape, generator=torch.Generator().set_state(state))
    start = (x + 0.001 * noise).clamp(0, 1)
    reference = model(x).detach()
    expected = pgd(model, x, y, eps=0.1, steps=3, step_size=0.05, random_start=False, x_init=start, early_stop=False,
                   loss=lambda logits, _: kl_per_sample(reference, logits))
    assert torch.equal(x_adv, expected)
    assert (kl_per_sample(reference, model(x_adv)) > kl_per_sample(reference, model(start))).all()


@pytest.mark.parametrize("start,low,high", [("normal", 1e-5, 0.01), ("uniform", 0.05, 0.1 + 1e-6)])
def test_mart_attack_starts_at_official_gaussian_by_default(start: str, low: float, high: float) -> None:
    """With step size 0 the attack's x' is its start: x + 0.001·N(0, I) (default) or uniform in the ball."""
    attack = AttackConfig(eps=0.1, steps=1, step_size=0.0)
    options = {} if start == "normal" else {"start": start}
    method = create_method(MethodConfig(name="mart", attack=attack, options=options), torch.Generator().manual_seed(0))
    x, y = torch.rand(64, 4) * 0.5 + 0.25, torch.randint(0, 3, (64,))
    distance = (method.terms(_linear_model(), x, y, step=0).x_adv - x).abs().max().item()
    assert low < distance < high
    with pytest.raises(UserError, match="start"):
        _method("mart", start="gaussian")


def test_trades_beta_zero_is_clean_ce() -> None:
    model = _BNNet().eval()
    x, y = torch.rand(5, 4), torch.randint(0, 3, (5,))
    loss, _ = _method("trades", beta=0.0).loss(model, x, y)
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)


def test_unknown_method_option_is_a_user_error() -> None:
    with pytest.raises(UserError, match="accepted options: beta"):
        _method("trades", gamma=1.0)
    with pytest.raises(UserError, match="unknown method"):
        _method("pgd_att")


def test_registry_lists_the_base_methods() -> None:
    assert {"natural", "pgd_at", "trades", "mart"} <= set(METHODS.names())


def test_each_plug_in_checks_the_bases_it_declares() -> None:
    """``PlugIn.check_base`` reads ``supported_bases``: a plug-in on an undeclared base is one line naming them."""
    from robustlab.methods import PLUGINS
    from robustlab.methods.base import PlugIn

    for chain, plugin in (("natural+fsr", "fsr"), ("natural+ancra", "ancra"), ("mart+uad", "uad"),
                          ("natural+awp", "awp"), ("natural+fsr+awp", "fsr")):  # the first plug-in of the chain refuses
        with pytest.raises(UserError,
                           match=f"plug-in {plugin} supports bases {', '.join(PLUGINS.get(plugin).supported_bases)}"):
            create_method(MethodConfig(name=chain), torch.Generator())
    assert create_method(MethodConfig(name="pgd_at+fsr+awp"), torch.Generator()).check_base() == "pgd_at"

    class only_natural(PlugIn):
        supported_bases = ("natural",)

    natural, pgd_at = (create_method(MethodConfig(name=n), torch.Generator()) for n in ("natural", "pgd_at"))
    assert only_natural(natural).base is natural
    with pytest.raises(UserError, match="method pgd_at\\+only_natural is not supported"):
        only_natural(pgd_at)


def test_ancra_applies_its_base_per_head_loss_to_every_head() -> None:
    """A fourth base needs no edit of ANCRA: its ``head_loss`` is what ANCRA applies to the final and auxiliary
    heads."""
    from robustlab.methods.ancra import ancra
    from robustlab.methods.objectives import pgd_at

    class doubled(pgd_at):
        def head_loss(self, logits_clean, logits_adv, y):  # type: ignore[no-untyped-def]
            ce, parts = super().head_loss(logits_clean, logits_adv, y)
            return 2 * ce, parts

    class ancra_any(ancra):
        supported_bases = ("pgd_at", "doubled")

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (6,), generator=g)
    heads = [torch.randn(6, 10, generator=g) for _ in range(9)]
    args = (y, heads[0], heads[1:3], heads[3], heads[4:6], heads[6], heads[7:9], torch.ones(6, dtype=torch.bool))
    attack = AttackConfig(eps=0.1, steps=1, step_size=0.1)
    plain, twice = (ancra_any(base(attack, torch.Generator()), zeta=1.0).combine(*args)[0]
                    for base in (pgd_at, doubled))
    ce_final = F.cross_entropy(heads[3], y, reduction="none")
    ce_aux = torch.stack([F.cross_entropy(h, y, reduction="none") for h in heads[4:6]]).mean(0)
    assert torch.allclose(twice - plain, ce_final + ancra_any(pgd_at(attack, torch.Generator())).lambda_cr * ce_aux)
