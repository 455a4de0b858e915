"""ANCRA plug-in (METHODS.md §3): reverse-attention gates, negatives, contrast, loss, training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from tiny_runs import tiny_config
from torch import nn

from robustlab.attacks._common import eval_mode
from robustlab.config import AttackConfig, MethodConfig, load_config
from robustlab.errors import UserError
from robustlab.evaluate import load_model
from robustlab.methods import PLUGINS, create_method, method_names
from robustlab.methods.ancra import DeferredFinal, ReverseAttention, asymmetric_contrast, ra_keys
from robustlab.methods.aux import AuxStack, capture_aux
from robustlab.models import create_model
from robustlab.train import train

K = 5
CONFIGS = [
    "digits_pgd_at_ancra", "digits_trades_ancra", "digits_mart_ancra",
    "cifar10_resnet18_trades_ancra", "cifar10_wrn34_10_trades_ancra",
]



def _method(base: str = "trades", steps: int = 2, eps: float = 0.1, step_size: float = 0.05, **options: Any):
    attack = AttackConfig(eps=eps, steps=steps, step_size=step_size)
    cfg = MethodConfig(name=f"{base}+ancra", attack=attack, options=dict(options))
    return create_method(cfg, torch.Generator().manual_seed(0))


def _small(base: str = "trades", **kw: Any):
    method = _method(base, **kw)
    return method, method.prepare_model(create_model("small_cnn", num_classes=K, width=8))


Choose = Callable[[int, torch.Tensor], torch.Tensor]


def _manual_forward(model: nn.Module, x: torch.Tensor, choose: Choose) -> tuple[torch.Tensor, list, list]:
    """The RA network computed by hand from the model's own blocks: returns logits, aux logits, gates."""
    h = model.stem(model.normalize(x))
    for stage in model.stages[:-1]:
        h = stage(h)
    final = model.final
    W = model.head.weight
    ps, gates = [], []
    children = dict(model.stages[-1].named_children())
    blocks = [c for n, c in children.items() if not n.startswith("ra")]
    n_ra = sum(n.startswith("ra") for n in children)
    for i, block in enumerate(blocks):
        h = block(h)
        if i >= len(blocks) - n_ra:
            z = final.activate(h) if isinstance(final, DeferredFinal) else h
            p = model.head(z.mean(dim=(2, 3)))
            j = choose(len(ps), p)
            ps.append(p)
            gates.append(j)
            h = z * W[j][:, :, None, None]
    return model.head(h.mean(dim=(2, 3))), ps, gates


# ------------------------------------------------------------------------ gates
@pytest.mark.parametrize("name, options, shape", [
    ("small_cnn", {"width": 8}, (1, 8, 8)),
    ("wide_resnet", {"depth": 16, "widen_factor": 1}, (3, 32, 32)),
])
def test_gate_uses_label_in_train_mode_and_aux_argmax_in_eval_mode(name: str, options: dict, shape: tuple) -> None:
    model = _method().prepare_model(create_model(name, num_classes=K, in_channels=shape[0], **options))
    x, y = torch.rand(6, *shape), torch.randint(0, K, (6,))
    model.eval()
    with capture_aux(model) as aux:
        out = model(x)
    with torch.no_grad():
        expected, ps, gates = _manual_forward(model, x, lambda b, p: p.argmax(1))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for b in range(2):
        torch.testing.assert_close(aux[f"p{b + 1}"], ps[b], rtol=1e-5, atol=1e-5)
        assert (torch.equal(aux[f"gate{b + 1}"], aux[f"p{b + 1}"].argmax(1))
                and torch.equal(aux[f"gate{b + 1}"], gates[b]))
    # Eval mode never uses labels: giving them changes nothing.
    with capture_aux(model, labels=(y + 1) % K):
        torch.testing.assert_close(model(x), out, rtol=0, atol=0)
    model.train()
    with capture_aux(model, labels=y) as aux:
        out = model(x)
    with torch.no_grad():
        expected, _, _ = _manual_forward(model, x, lambda b, p: y)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(aux["gate1"], y) and torch.equal(aux["gate2"], y)
    with capture_aux(model, labels=(y + 1) % K):
        assert not torch.allclose(model(x), out)


def test_forced_gate_plain_logits_and_no_added_parameters() -> None:
    plain = create_model("small_cnn", num_classes=K, width=8)
    n_params, keys = len(list(plain.parameters())), set(plain.state_dict())
    model = _method().prepare_model(plain)
    assert len(list(model.parameters())) == n_params and set(model.state_dict()) == keys
    assert [n for n, _ in model.stages[-1].named_children()] == ["0", "ra1", "1", "ra2"]
    assert ra_keys(model) == ["p1", "p2"]
    x = torch.rand(4, 1, 8, 8)
    gate = torch.tensor([3, 3, 0, 1])
    for training in (False, True):
        model.train(training)
        out = model(x)
        assert type(out) is torch.Tensor and out.shape == (4, K)
        with capture_aux(model, gate=gate) as aux:
            forced = model(x)
        assert torch.equal(aux["gate1"], gate) and torch.equal(aux["gate2"], gate)
        with torch.no_grad():
            expected, _, _ = _manual_forward(model, x, lambda b, p: gate)
        torch.testing.assert_close(forced, expected, rtol=1e-5, atol=1e-5)
    stacked = AuxStack(model.eval(), ["p1", "p2"])(x)
    assert stacked.shape == (4, 3, K)


def test_wrn_final_is_moved_into_the_blocks_with_its_keys() -> None:
    plain = create_model("wide_resnet", num_classes=K, depth=16, widen_factor=1)
    keys = set(plain.state_dict())
    model = _method().prepare_model(plain)
    assert isinstance(model.final, DeferredFinal) and set(model.state_dict()) == keys
    f = torch.randn(2, 64, 8, 8)
    torch.testing.assert_close(model.final(f), f)
    assert [n for n, _ in model.stages[-1].named_children()] == ["0", "ra1", "1", "ra2"]
    one_block = _method().prepare_model(create_model("wide_resnet", num_classes=K, depth=10, widen_factor=1))
    assert ra_keys(one_block) == ["p1"]
    vgg = _method().prepare_model(create_model("vgg16_bn", num_classes=K, width=8))
    assert [n for n, _ in vgg.stages[-1].named_children()] == ["0", "1", "2", "ra1", "3", "ra2"]


def test_unsupported_base_and_options() -> None:
    with pytest.raises(UserError, match="not supported"):
        create_method(MethodConfig(name="natural+ancra"), torch.Generator())
    with pytest.raises(UserError, match="adv_start"):
        _method(adv_start="zero")
    assert PLUGINS.get("ancra").supported_bases == ("pgd_at", "trades", "mart")
    assert {"pgd_at+ancra", "trades+ancra", "mart+ancra"} <= set(method_names("*ancra"))
    method = create_method(MethodConfig(name="trades+ancra", options={"beta": 3.0, "zeta": 1.0}), torch.Generator())
    assert method.base.beta == 3.0 and method.zeta == 1.0 and method.lambda_cr == 2.0


# -------------------------------------------------------------------- contrast
def test_asymmetric_contrast_on_hand_made_vectors() -> None:
    u = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5]], requires_grad=True)
    v = torch.tensor([[0.5, 0.4, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], requires_grad=True)
    terms = asymmetric_contrast(u, v)
    expected = [math.sqrt(0.7 * 0.5), 0.0, math.sqrt(0.5 * 0.8)]
    assert terms.tolist() == pytest.approx(expected, rel=1e-6)
    terms.sum().backward()
    assert u.grad is None  # the anchor is detached
    grad_v = torch.zeros(3, 3)
    grad_v[0, 0] = 0.5 * math.sqrt(0.7 / 0.5)
    grad_v[2, 2] = 0.5 * math.sqrt(0.5 / 0.8)
    torch.testing.assert_close(v.grad, grad_v)


# ------------------------------------------------------------------- negatives
def test_negatives_come_from_another_class_uniformly_over_classes() -> None:
    method = _method()
    y = torch.tensor([0, 1, 1, 1, 1, 1, 1, 2])
    picks = torch.stack([method.pick_negatives(y, 3)[0] for _ in range(600)])
    assert (y[picks] != y).all()
    # Anchor 0 sees classes 1 (six examples) and 2 (one): each class about half the time.
    share_2 = (y[picks[:, 0]] == 2).float().mean().item()
    assert 0.4 < share_2 < 0.6
    assert set(picks[:, 0][y[picks[:, 0]] == 1].tolist()) == {1, 2, 3, 4, 5, 6}
    idx, has_neg = method.pick_negatives(torch.tensor([2, 2, 2]), 3)
    assert not has_neg.any() and idx.tolist() == [0, 1, 2]


def test_negatives_move_toward_the_anchor_class() -> None:
    method, model = _small(steps=5, eps=0.3, step_size=0.05)
    model.train()
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % K
    idx, _ = method.pick_negatives(y, K)
    x_n, y_n = x[idx], y[idx]
    x_o = method.negatives(model, x_n, y_n, y)
    assert model.training
    assert (x_o - x_n).abs().max() <= 0.3 + 1e-6 and x_o.min() >= 0 and x_o.max() <= 1
    with eval_mode(model), torch.no_grad():
        before = nn.functional.cross_entropy(model(x_n), y)
        after = nn.functional.cross_entropy(model(x_o), y)
        stack = AuxStack(model, ["p1", "p2"])
        aux_before = nn.functional.cross_entropy(stack(x_n)[:, 1], y)
        aux_after = nn.functional.cross_entropy(stack(x_o)[:, 1], y)
    assert after < before and aux_after < aux_before


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_training_attacks_run_in_the_configured_bn_mode(bn_mode: str) -> None:
    """x' and the negatives are crafted with the model in ``method.attack.bn_mode`` (eval by default)."""
    method = create_method(
        MethodConfig(name="trades+ancra", attack=AttackConfig(eps=0.1, steps=2, step_size=0.05, bn_mode=bn_mode)),
        torch.Generator().manual_seed(0))
    model = method.prepare_model(create_model("small_cnn", num_classes=K, width=8)).train()
    modes: list[bool] = []
    model.head.register_forward_hook(lambda m, i, o: modes.append(m.training))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, K, (16,))
    method.adversarial(model, x, y)
    assert modes and all(m == (bn_mode == "train") for m in modes)
    modes.clear()
    method.negatives(model, x, y, (y + 1) % K)
    assert modes and all(m == (bn_mode == "train") for m in modes)
    assert model.training


def test_training_adversary_increases_the_final_plus_aux_loss() -> None:
    method, model = _small("pgd_at", steps=3, eps=0.2, step_size=0.05)
    model.train()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, K, (16,))
    x_adv = method.adversarial(model, x, y)
    assert model.training and (x_adv - x).abs().max() <= 0.2 + 1e-6
    stack = AuxStack(model, ["p1", "p2"])
    with eval_mode(stack), torch.no_grad():
        def objective(inp: torch.Tensor) -> torch.Tensor:
            s = stack(inp)
            ce = [nn.functional.cross_entropy(s[:, b], y) for b in range(3)]
            return ce[0] + 2.0 * (ce[1] + ce[2]) / 2
        assert objective(x_adv) > objective(x)


# ------------------------------------------------------------------------ loss
def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum(1)


def _hand_loss(base: str, y, clean, aux_clean, adv, aux_adv, neg, aux_neg, has_neg, lam=2.0, zeta=3.0, beta=6.0):
    """The loss of METHODS.md §3 written out with plain formulas (double precision)."""
    d = lambda t: t.detach().double()  # noqa: E731
    rows = torch.arange(len(y))

    def ce(z):
        return -d(z).log_softmax(1)[rows, y]

    def base_loss(c, a):
        p, q = d(c).softmax(1), d(a).softmax(1)
        if base == "pgd_at":
            return ce(a)
        if base == "trades":
            return ce(c) + beta * _kl(p, q)
        q_other = q.clone()
        q_other[rows, y] = 0
        return -q[rows, y].log() - torch.log(1 - q_other.max(1).values) + beta * _kl(p, q) * (1 - p[rows, y])

    def contrast(c, v):
        u, w = d(c).softmax(1), d(v).softmax(1)
        same = (u.argmax(1) == w.argmax(1)).double()
        return same * torch.sqrt(u.max(1).values * w.max(1).values) * has_neg.double()

    b = len(aux_clean)
    aux_part = sum(base_loss(c, a) for c, a in zip(aux_clean, aux_adv)) / b
    anc_aux = sum(contrast(c, v) for c, v in zip(aux_clean, aux_neg)) / b
    return base_loss(clean, adv) + lam * aux_part + zeta * (contrast(clean, neg) + lam * anc_aux)


@pytest.mark.parametrize("base", ["pgd_at", "trades", "mart"])
def test_combine_matches_the_formula_on_hand_made_logits(base: str) -> None:
    method = _method(base, **({"beta": 6.0} if base == "trades" else {"lam": 6.0} if base == "mart" else {}))
    g = torch.Generator().manual_seed(1)
    n = 4
    logits = [torch.randn(n, 3, generator=g) * 2 for _ in range(9)]
    # Make anchors and negatives share the argmax on some rows so the contrast is not all zero.
    logits[6][:2] = logits[0][:2] + 0.1
    y = torch.tensor([0, 1, 2, 1])
    has_neg = torch.tensor([True, True, True, False])
    args = (y, logits[0], logits[1:3], logits[3], logits[4:6], logits[6], logits[7:9], has_neg)
    total, parts = method.combine(*args)
    expected = _hand_loss(base, *args)
    torch.testing.assert_close(total.double(), expected, rtol=1e-5, atol=1e-6)
    assert parts["anc"][3] == 0 and parts["anc"][:2].gt(0).all()


@pytest.mark.parametrize("base", ["pgd_at", "trades", "mart"])
def test_terms_follow_the_formula_and_negatives_gate_on_their_own_label(base: str) -> None:
    method, model = _small(base)
    model.train()
    x, y = torch.rand(12, 1, 8, 8), torch.arange(12) % K
    terms = method.terms(model, x, y, step=0)
    e = terms.extra
    y_neg = y[e["neg_index"]]
    assert (y_neg != y).all() and e["has_neg"].all()
    expected = _hand_loss(
        base, y, terms.logits_clean, e["aux_clean"], terms.logits_adv, e["aux_adv"], e["logits_neg"], e["aux_neg"],
        e["has_neg"],
    )
    torch.testing.assert_close(terms.per_sample.detach().double(), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), capture_aux(model, labels=y_neg):
        torch.testing.assert_close(model(e["x_neg"]), e["logits_neg"].detach(), rtol=1e-5, atol=1e-5)
    with torch.no_grad(), capture_aux(model, labels=y):
        assert not torch.allclose(model(e["x_neg"]), e["logits_neg"].detach())


@pytest.mark.parametrize("base", ["pgd_at", "mart"])
def test_every_model_parameter_gets_a_gradient(base: str) -> None:
    method, model = _small(base)
    model.train()
    loss, parts = method.loss(model, torch.rand(16, 1, 8, 8), torch.arange(16) % K)
    loss.backward()
    assert {"anc", "anc_aux", "aux_loss", "loss"} <= set(parts)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_single_class_batch_has_no_contrast_and_a_finite_loss() -> None:
    method, model = _small()
    model.train()
    loss, parts = method.loss(model, torch.rand(6, 1, 8, 8), torch.full((6,), 2))
    assert torch.isfinite(loss) and parts["anc"] == 0


# ------------------------------------------------------------- train + reload
@pytest.mark.parametrize("base", ["pgd_at", "trades", "mart"])
def test_combination_trains_on_digits_and_reloads(tmp_path: Path, base: str) -> None:
    cfg = tiny_config(tmp_path, base, f"{base}+ancra", **{"train.epochs": 1})
    record = train(cfg, log=lambda _: None)
    assert math.isfinite(record["train_loss"]) and "train_anc" in record
    model, meta = load_model(cfg.run_dir)
    assert meta["model"]["method"]["name"] == f"{base}+ancra"
    assert sum(isinstance(m, ReverseAttention) for m in model.modules()) == 2 and not model.training
    x = torch.rand(4, 1, 8, 8)
    with capture_aux(model) as aux:
        a = model(x)
    b = model(x)
    assert type(a) is torch.Tensor and torch.equal(a, b) and {"p1", "p2", "gate1", "gate2"} == set(aux)


@pytest.mark.parametrize("name", CONFIGS)
def test_bundled_configs_load(name: str) -> None:
    cfg = load_config(name)
    assert cfg.method.name.endswith("+ancra")
    method = create_method(cfg.method, torch.Generator())
    assert method.zeta == 3.0 and method.lambda_cr == 2.0
    if name.startswith("cifar10"):
        assert cfg.method.name == "trades+ancra" and method.base.beta == 6.0
        assert cfg.data.name == "cifar10" and cfg.data.crop_padding == 4 and cfg.data.flip
        assert cfg.method.attack.eps == pytest.approx(8 / 255) and cfg.method.attack.step_size == pytest.approx(2 / 255)
        assert cfg.train.epochs == 120 and cfg.optim.lr == 0.01 and cfg.optim.weight_decay == 2e-4
        assert [round(m * 120) for m in cfg.schedule.milestones] == [75, 90, 100]
