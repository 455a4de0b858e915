"""UAD-AT built from the abstract (METHODS.md §5): DSU modules, refined reference, gradient alignment."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from robustlab.config import AttackConfig, MethodConfig
from robustlab.errors import UserError
from robustlab.methods import PLUGINS, create_method, method_names
from robustlab.methods.uad import (
    FeatureStatNoise,
    alignment_loss,
    default_stages,
    feature_statistics,
    kl_to,
    perturb_statistics,
    refined_reference,
    uad,
)
from robustlab.models import create_model


def _method(name: str = "pgd_at+uad", eps: float = 0.1, seed: int = 0, **options: object):
    attack = AttackConfig(eps=eps, steps=2, step_size=0.05)
    return create_method(MethodConfig(name=name, attack=attack, options=dict(options)),
                         torch.Generator().manual_seed(seed))


def _model(method=None, width: int = 4):
    torch.manual_seed(1)
    model = create_model("small_cnn", width=width)
    return model if method is None else method.prepare_model(model)


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_plugin_is_registered_for_pgd_at_and_trades_only_and_says_built_from_the_abstract() -> None:
    assert {"pgd_at+uad", "trades+uad"} <= set(method_names())
    assert "mart+uad" not in method_names()
    assert "built from the abstract" in uad.help
    assert "built from the abstract" in (uad.__doc__ or "").splitlines()[0]
    with pytest.raises(UserError, match="supports bases"):
        _method("mart+uad")
    assert PLUGINS.get("uad") is uad


@pytest.mark.parametrize("options,match", [
    ({"dsu": "yes"}, "true or false"), ({"dsu_prob": 1.5}, r"\[0, 1\]"), ({"samples": 0}, ">= 1"),
    ({"dsu_stages": 1}, "list of stage"), ({"lambda": 1.0}, "accepted options"),
])
def test_bad_options_are_user_errors(options: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        _method(**options)


def test_dsu_modules_go_after_the_default_stages_and_add_no_state() -> None:
    assert default_stages(3) == [0, 1] and default_stages(4) == [0, 1, 2] and default_stages(2) == [0]
    method = _method()
    plain = _model()
    model = _method().prepare_model(copy.deepcopy(plain))
    flags = [any(isinstance(m, FeatureStatNoise) for m in stage) for stage in model.stages]
    assert flags == [True, True, False]
    assert list(model.state_dict()) == list(plain.state_dict())
    assert method.prepare_model(model) is model and sum(isinstance(m, FeatureStatNoise) for m in model.modules()) == 2
    chosen = _method(dsu_stages=[-1]).prepare_model(_model())
    assert [any(isinstance(m, FeatureStatNoise) for m in s) for s in chosen.stages] == [False, False, True]
    with pytest.raises(UserError, match="out of range"):
        _method(dsu_stages=[5]).prepare_model(_model())
    assert not any(isinstance(m, FeatureStatNoise) for m in _method(dsu=False).prepare_model(_model()).modules())
    resnet = _method().prepare_model(create_model("resnet18", num_classes=10))
    assert [any(isinstance(m, FeatureStatNoise) for m in s) for s in resnet.stages] == [True, True, True, False]


def test_eval_mode_is_deterministic_and_equals_the_plain_network() -> None:
    method = _method(dsu_prob=1.0)
    model = _model(method)
    x, _ = _batch()
    plain = _model()
    plain.load_state_dict(model.state_dict())  # strict: no extra entries
    model.eval(), plain.eval()
    with method.sampling(model):  # even switched on, eval mode is the identity
        a, b = model(x), model(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, plain(x), rtol=0, atol=0)


def test_sampling_is_on_only_in_train_mode_within_the_adversarial_forward() -> None:
    method = _method(dsu_prob=1.0)
    model = _model(method).train()
    plain = _model().train()
    x, _ = _batch()
    with method.sampling(model):
        a, b = model(x), model(x)
    assert not torch.allclose(a, b)  # a fresh draw per forward
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)  # outside the adversarial forward: plain
    assert not any(m.active for m in model.modules() if isinstance(m, FeatureStatNoise))
    never = _method(dsu_prob=0.0)
    model0 = _model(never).train()
    with never.sampling(model0):
        torch.testing.assert_close(model0(x), plain(x), rtol=0, atol=0)


def test_sampling_draws_from_the_method_generator() -> None:
    x, _ = _batch()
    outs = []
    for _ in range(2):
        method = _method(dsu_prob=1.0, seed=7)
        model = _model(method).train()
        with method.sampling(model):
            outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_feature_statistics_perturbation_matches_hand_formula() -> None:
    a = torch.randn(3, 2, 4, 4) * 2 + 1
    xi1, xi2 = torch.randn(3, 2), torch.randn(3, 2)
    out = perturb_statistics(a, noise=(xi1, xi2))
    for i in range(3):
        for c in range(2):
            v = a[i, c]
            mu, sigma = v.mean(), math.sqrt(v.var(unbiased=False).item() + 1e-6)
            mus = a.mean(dim=(2, 3))[:, c]
            sigmas = (a.var(dim=(2, 3), unbiased=False)[:, c] + 1e-6).sqrt()
            sd_mu = math.sqrt(mus.var(unbiased=False).item() + 1e-6)
            sd_sigma = math.sqrt(sigmas.var(unbiased=False).item() + 1e-6)
            expected = (v - mu) / sigma * (sigma + xi2[i, c] * sd_sigma) + mu + xi1[i, c] * sd_mu
            torch.testing.assert_close(out[i, c], expected, rtol=1e-5, atol=1e-5)
    zero = perturb_statistics(a, noise=(torch.zeros(3, 2), torch.zeros(3, 2)))
    torch.testing.assert_close(zero, a, rtol=1e-5, atol=1e-5)


def test_refined_reference_matches_hand_computation() -> None:
    k = 3
    logits = torch.tensor([
        [3.0, 0.0, 0.0],   # 0: class 0, correct
        [2.0, 1.0, 0.0],   # 1: class 0, correct
        [0.0, 3.0, 0.0],   # 2: class 0, wrong -> weighted mean of 0 and 1
        [0.0, 0.0, 2.0],   # 3: class 1, wrong, no correct class-1 sample -> smoothed one-hot
        [0.0, 0.0, 1.0],   # 4: class 2, correct
    ])
    y = torch.tensor([0, 0, 0, 1, 2])
    stats = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [5.0, 5.0], [2.0, 0.0]])
    q, refined = refined_reference(logits, stats, y, smoothing=0.1)
    p = F.softmax(logits, dim=1)
    assert refined.tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]
    for i in (0, 1, 4):
        torch.testing.assert_close(q[i], p[i])
    d0, d1 = 1.0, 1.0  # ‖s_2 − s_0‖² = 1, ‖s_2 − s_1‖² = 1; t = median(1, 1) = 1
    w0, w1 = math.exp(-d0 / 1.0), math.exp(-d1 / 1.0)
    torch.testing.assert_close(q[2], (w0 * p[0] + w1 * p[1]) / (w0 + w1))
    torch.testing.assert_close(q[3], torch.tensor([0.1 / k, 0.9 + 0.1 / k, 0.1 / k]))
    # unequal distances: t is the median of the used squared distances
    stats2 = stats.clone()
    stats2[1] = torch.tensor([0.0, 3.0])  # ‖s_2 − s_1‖² = 4; distances used for sample 2: {1, 4} -> median
    q2, _ = refined_reference(logits, stats2, y)
    t = torch.tensor([1.0, 4.0]).median()  # torch's median of an even count is the lower middle value
    w = torch.softmax(torch.tensor([-1.0, -4.0]) / t, dim=0)
    torch.testing.assert_close(q2[2], w[0] * p[0] + w[1] * p[1])
    assert not q.requires_grad


def test_distribution_matching_loss_matches_hand_computation() -> None:
    """pgd_at+uad with only (b): CE(f(x'), y) + 6·KL(q ‖ P(x')), here with x' = x (eps 0)."""
    method = _method(eps=0.0, dsu=False, iga=False)
    model = _model(method).train()
    x, y = _batch()
    loss, parts = method.loss(model, x, y)
    reference = _model().train()
    feats = reference.forward_features(x)
    logits = reference.forward_head(feats)
    q, _ = refined_reference(logits, feature_statistics(feats), y)
    kl = (q * (q.log() - F.log_softmax(logits, dim=1))).sum(1)
    torch.testing.assert_close(kl_to(q, logits), kl)
    expected = F.cross_entropy(logits, y) + 6.0 * kl.mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["dist"], kl.mean(), rtol=1e-5, atol=1e-6)


def test_trades_variant_replaces_the_kl_reference() -> None:
    """trades+uad with only (b): CE(f(x), y) + β·KL(q ‖ P(x')), β = TRADES' beta, x' = x (eps 0)."""
    method = _method("trades+uad", eps=0.0, dsu=False, iga=False, beta=2.0)
    assert method.beta_dist == 2.0
    model = _model(method).train()
    x, y = _batch()
    loss, _ = method.loss(model, x, y)
    reference = _model().train()
    feats = reference.forward_features(x)
    logits = reference.forward_head(feats)
    q, _ = refined_reference(logits, feature_statistics(feats), y)
    expected = F.cross_entropy(logits, y) + 2.0 * kl_to(q, logits).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("base", ["pgd_at", "trades"])
def test_all_components_off_is_exactly_the_base(base: str) -> None:
    x, y = _batch()
    plug = _method(f"{base}+uad", dsu=False, refined_reference=False, iga=False, seed=5)
    plain = _method(base, seed=5)
    loss_plug, _ = plug.loss(_model(plug).train(), x, y)
    loss_plain, _ = plain.loss(_model().train(), x, y)
    torch.testing.assert_close(loss_plug, loss_plain, rtol=1e-6, atol=1e-7)


def test_alignment_loss_matches_hand_computation_and_is_zero_when_x_adv_is_x() -> None:
    g, h = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    expected = torch.stack([1 - torch.dot(g[i].flatten(), h[i].flatten()) / (g[i].norm() * h[i].norm())
                            for i in range(4)])
    torch.testing.assert_close(alignment_loss(g, h), expected)
    method = _method(eps=0.0, dsu=False, refined_reference=False)
    model = _model(method).train()
    x, y = _batch()
    _, parts = method.loss(model, x, y)
    assert abs(parts["iga"].item()) < 1e-5
    # with a real x' the term is positive and a hand computation agrees
    method = _method(eps=0.3, dsu=False, refined_reference=False, seed=2)
    model = _model(method).train()
    terms = method.terms(model, x, y, step=0)
    assert terms.parts["iga"].mean() > 1e-4
    x_req = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), x_req)
    xa = terms.x_adv.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)
    torch.testing.assert_close(terms.parts["iga"], alignment_loss(gx, ga), rtol=1e-4, atol=1e-5)


def test_samples_average_and_full_method_trains_every_parameter() -> None:
    x, y = _batch()
    one = _method(dsu_prob=0.0, samples=1, seed=4)
    three = _method(dsu_prob=0.0, samples=3, seed=4)
    l1, _ = one.loss(_model(one).train(), x, y)
    l3, _ = three.loss(_model(three).train(), x, y)
    torch.testing.assert_close(l1, l3, rtol=1e-5, atol=1e-6)  # identical samples: the mean is one sample
    # with sampling on, the M forwards of x' differ and the loss averages their CE and KL terms
    method = _method(dsu_prob=1.0, samples=3, iga=False, seed=4)
    model = _model(method).train()
    sampled: list[torch.Tensor] = []
    noise = [m for m in model.modules() if isinstance(m, FeatureStatNoise)]
    model.register_forward_hook(lambda m, i, o: sampled.append(o.detach()) if noise[0].active else None)
    terms = method.terms(model, x, y, step=0)
    assert len(sampled) == 3 and not torch.allclose(sampled[0], sampled[1])
    ce = torch.stack([F.cross_entropy(z, y, reduction="none") for z in sampled]).mean(0)
    torch.testing.assert_close(terms.parts["ce_adv"], ce, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        feats, clean = model(x, output="features_and_logits")
    q, _ = refined_reference(clean, feature_statistics(feats), y)
    dist = torch.stack([kl_to(q, z) for z in sampled]).mean(0)
    torch.testing.assert_close(terms.parts["dist"], dist, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(terms.per_sample, ce + method.beta_dist * dist, rtol=1e-4, atol=1e-5)
    assert _method(dsu=False, samples=3).samples == 1
    for name in ("pgd_at+uad", "trades+uad"):
        method = _method(name, dsu_prob=1.0, samples=2)
        model = _model(method).train()
        loss, parts = method.loss(model, x, y)
        assert torch.isfinite(loss) and {"ce_adv", "dist", "iga", "acc_adv"} <= set(parts)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        assert model.training
