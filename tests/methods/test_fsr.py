"""FSR plug-in (METHODS.md §2): module maths, placement per model, loss against hand values, training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_runs import tiny_config
from torch import nn

from robustlab.config import AttackConfig, MethodConfig, load_config
from robustlab.errors import UserError
from robustlab.evaluate import load_model
from robustlab.methods import PLUGINS, create_method, method_names
from robustlab.methods.aux import capture_aux
from robustlab.methods.fsr import FSRModule, highest_wrong_class
from robustlab.models import create_model
from robustlab.train import train

K = 5
# name -> (cheap options, input shape, where FSR must sit: "final" after final / "stages.<i>")
MODELS: dict[str, tuple[dict[str, Any], tuple[int, int, int], str]] = {
    "small_cnn": ({"width": 8}, (1, 8, 8), "final"),
    "resnet18": ({"width": 8}, (3, 32, 32), "final"),
    "preact_resnet18": ({"width": 8}, (3, 32, 32), "final"),
    "wide_resnet": ({"depth": 10, "widen_factor": 1}, (3, 32, 32), "final"),
    "vgg16_bn": ({"width": 8}, (3, 32, 32), "stages.3"),
}
CONFIGS = [
    "digits_pgd_at_fsr", "digits_trades_fsr", "digits_mart_fsr",
    "cifar10_resnet18_pgd_at_fsr", "cifar10_vgg16_pgd_at_fsr", "cifar10_wrn34_10_pgd_at_fsr",
]



def _method(base: str = "pgd_at", steps: int = 2, **options: Any):
    attack = AttackConfig(eps=0.1, steps=steps, step_size=0.05)
    cfg = MethodConfig(name=f"{base}+fsr", attack=attack, options=dict(options))
    return create_method(cfg, torch.Generator().manual_seed(0))


def _small(base: str = "pgd_at", **options: Any):
    method = _method(base, **options)
    model = method.prepare_model(create_model("small_cnn", num_classes=K, width=8))
    return method, model


def _fsr_module(model: nn.Module) -> FSRModule:
    (module,) = [m for m in model.modules() if isinstance(m, FSRModule)]
    return module


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain per-sample cross-entropy: log Σ exp z − z_y (double precision)."""
    z = logits.detach().double()
    return torch.stack([torch.log(torch.exp(z[i] - z[i].max()).sum()) + z[i].max() - z[i, y[i]] for i in range(len(y))])


# ------------------------------------------------------------------ module maths
def test_eval_forward_is_deterministic_and_train_masks_vary() -> None:
    _, model = _small()
    x = torch.rand(6, 1, 8, 8)
    model.eval()
    with capture_aux(model) as a1:
        out1 = model(x)
    with capture_aux(model) as a2:
        out2 = model(x)
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)
    torch.testing.assert_close(a1["mask"], a2["mask"], rtol=0, atol=0)
    model.train()
    with capture_aux(model) as t1:
        model(x)
    with capture_aux(model) as t2:
        model(x)
    assert not torch.equal(t1["mask"], t2["mask"])
    # The noise comes from the capture's generator when one is given: same seed, same mask.
    masks = []
    for _ in range(2):
        with capture_aux(model, generator=torch.Generator().manual_seed(3)) as aux:
            model(x)
        masks.append(aux["mask"])
    torch.testing.assert_close(masks[0], masks[1], rtol=0, atol=0)


@pytest.mark.parametrize("training", [False, True])
def test_output_identity_and_mask_formula(training: bool) -> None:
    module = FSRModule(6, 3, tau=0.1).train(training)
    f = torch.randn(4, 6, 3, 3).relu()
    with capture_aux(module) as aux:
        out = module(f)
    m = aux["mask"]
    with torch.no_grad():
        expected = (1 - m) * module.recalibration((1 - m) * f)
    torch.testing.assert_close(out - f, expected, rtol=1e-5, atol=1e-6)
    # Auxiliary logits are h(GAP ·) of f+ = m f, f- = (1 - m) f, f~ = f- + (1 - m) R(f-).
    f_neg = (1 - m) * f
    with torch.no_grad():
        f_rec = f_neg + (1 - m) * module.recalibration(f_neg)
    for key, part in (("z_pos", m * f), ("z_neg", f_neg), ("z_rec", f_rec)):
        torch.testing.assert_close(aux[key], module.head(part.mean(dim=(2, 3))), rtol=1e-5, atol=1e-6)
    if not training:
        s = torch.sigmoid(module.separation(f))
        m_hand = torch.sigmoid((torch.log(s + 1e-8) - torch.log(1 - s + 1e-8)) / 0.1)
        torch.testing.assert_close(m, m_hand, rtol=1e-5, atol=1e-6)
    assert ((m >= 0) & (m <= 1)).all()


def test_highest_wrong_class_by_hand() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 5.0, 4.0], [1.0, 0.0, 2.0]])
    y = torch.tensor([0, 2, 2])
    assert highest_wrong_class(logits, y).tolist() == [1, 1, 0]
    rand = torch.randn(50, 7)
    labels = torch.randint(0, 7, (50,))
    y_star = highest_wrong_class(rand, labels)
    assert (y_star != labels).all()
    masked = rand.clone()
    masked[torch.arange(50), labels] = -math.inf
    assert torch.equal(y_star, masked.argmax(1))


# --------------------------------------------------------------------- placement
@pytest.mark.parametrize("name", list(MODELS))
def test_placement_keeps_forward_and_original_keys(name: str) -> None:
    options, shape, where = MODELS[name]
    plain = create_model(name, num_classes=K, in_channels=shape[0], **options).eval()
    model = _method().prepare_model(create_model(name, num_classes=K, in_channels=shape[0], **options))
    plain_keys, keys = set(plain.state_dict()), set(model.state_dict())
    assert plain_keys < keys and all(".fsr." in k for k in keys - plain_keys)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".fsr." in k for k in missing)
    container = model.final if where == "final" else model.stages[int(where.split(".")[1])]
    module = container.fsr
    assert isinstance(module, FSRModule) and list(container.children())[-1] is module
    # FSR is fed the map METHODS.md names: forward_features (after final) or VGG's stages[3] output.
    seen: list[torch.Tensor] = []
    module.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    model.eval()
    x = torch.rand(2, *shape)
    out = model(x)
    with torch.no_grad():
        expected_in = plain.forward_features(x) if where == "final" else plain.forward_intermediates(x, [3])[0]
    torch.testing.assert_close(seen[0], expected_in)
    assert type(out) is torch.Tensor and out.shape == (2, K)
    model.train()
    out = model(x)
    assert type(out) is torch.Tensor and out.shape == (2, K)


def test_stage_option_and_bad_input() -> None:
    model = _method(stage=1).prepare_model(create_model("small_cnn", num_classes=K, width=8))
    assert isinstance(model.stages[1].fsr, FSRModule)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, K)
    with pytest.raises(UserError, match="out of range"):
        _method(stage=5).prepare_model(create_model("small_cnn", num_classes=K, width=8))
    with pytest.raises(UserError, match="not supported"):
        create_method(MethodConfig(name="natural+fsr"), torch.Generator())
    with pytest.raises(UserError, match="tau"):
        _method(tau=0)
    assert PLUGINS.get("fsr").supported_bases == ("pgd_at", "trades", "mart")
    assert {"pgd_at+fsr", "trades+fsr", "mart+fsr"} <= set(method_names("*fsr"))
    # prepare_model twice adds nothing.
    method = _method()
    once = method.prepare_model(create_model("small_cnn", num_classes=K, width=8))
    assert len(list(method.prepare_model(once).parameters())) == len(list(once.parameters()))


# -------------------------------------------------------------------------- loss
def _counting(model: nn.Module) -> list[int]:
    calls: list[int] = []
    _fsr_module(model).register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("base", ["pgd_at", "trades", "mart"])
def test_loss_matches_hand_computation(base: str) -> None:
    method, model = _small(base, lambda_sep=0.5, lambda_rec=2.0)
    model.train()
    calls = _counting(model)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, K, (8,))
    terms = method.terms(model, x, y, step=0)
    # No extra pass: attack steps (+ TRADES' reference) + the base's own train-mode forwards.
    assert len(calls) == {"pgd_at": 2 + 1, "trades": 1 + 2 + 2, "mart": 2 + 2}[base]
    aux, y_star = terms.extra["fsr_aux"], terms.extra["y_star"]
    assert (y_star != y).all()
    adv = terms.logits_adv.detach().double()
    wrong = adv.clone()
    wrong[torch.arange(8), y] = -math.inf
    assert torch.equal(y_star, wrong.argmax(1))
    fsr_part = 0.5 * (_ce(aux["z_pos"], y) + _ce(aux["z_neg"], y_star)) + 2.0 * _ce(aux["z_rec"], y)
    if base == "pgd_at":
        base_part = _ce(terms.logits_adv, y)
    else:
        clean = terms.logits_clean.detach().double()
        p, q = clean.softmax(1), adv.softmax(1)
        kl = (p * (p.log() - q.log())).sum(1)
        if base == "trades":
            base_part = _ce(clean, y) + 6.0 * kl
        else:
            q_other = q.clone()
            q_other[torch.arange(8), y] = 0
            bce = -q[torch.arange(8), y].log() - torch.log(1 - q_other.max(1).values)
            base_part = bce + 6.0 * kl * (1 - p[torch.arange(8), y])
    torch.testing.assert_close(terms.per_sample.detach().double(), base_part + fsr_part, rtol=1e-5, atol=1e-5)
    loss, parts = method.loss(model, x, y)
    assert {"fsr_pos", "fsr_neg", "fsr_rec", "loss"} <= set(parts)


@pytest.mark.parametrize("base", ["trades", "mart"])
def test_auxiliary_terms_come_from_the_adversarial_forward(base: str) -> None:
    """Under TRADES/MART (a clean and an adversarial train forward) FSR's terms use x'’s auxiliary logits."""
    method, model = _small(base)
    model.train()
    module = _fsr_module(model)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input, z_pos) of every train forward inside a capture
    model.register_forward_hook(
        lambda m, i, o: seen.append((i[0], module.capture.outputs["z_pos"])) if m.training and module.capture else None)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, K, (8,))
    terms = method.terms(model, x, y, step=0)
    (adv_z,) = [z for inp, z in seen if torch.equal(inp, terms.x_adv)]
    (clean_z,) = [z for inp, z in seen if torch.equal(inp, x)]
    assert terms.extra["fsr_aux"]["z_pos"] is adv_z and not torch.allclose(adv_z, clean_z)


@pytest.mark.parametrize("base", ["pgd_at", "trades"])
def test_every_fsr_parameter_gets_a_gradient(base: str) -> None:
    method, model = _small(base)
    model.train()
    loss, _ = method.loss(model, torch.rand(16, 1, 8, 8), torch.randint(0, K, (16,)))
    loss.backward()
    for name, p in _fsr_module(model).named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in model.parameters())


# --------------------------------------------------------------- train + reload
@pytest.mark.parametrize("base", ["pgd_at", "trades", "mart"])
def test_combination_trains_on_digits_and_reloads(tmp_path: Path, base: str) -> None:
    cfg = tiny_config(tmp_path, base, f"{base}+fsr", **{"train.epochs": 1})
    record = train(cfg, log=lambda _: None)
    assert math.isfinite(record["train_loss"]) and "train_fsr_rec" in record
    model, meta = load_model(cfg.run_dir)
    assert meta["model"]["method"]["name"] == f"{base}+fsr"
    module = _fsr_module(model)
    assert not module.training
    x = torch.rand(4, 1, 8, 8)
    with capture_aux(model) as aux:
        a = model(x)
    b = model(x)
    assert type(a) is torch.Tensor and torch.equal(a, b) and set(aux) == {"z_pos", "z_neg", "z_rec", "mask"}


@pytest.mark.parametrize("name", CONFIGS)
def test_bundled_configs_load(name: str) -> None:
    cfg = load_config(name)
    assert cfg.method.name.endswith("+fsr")
    method = create_method(cfg.method, torch.Generator())
    assert method.lambda_sep == 1.0 and method.lambda_rec == 1.0
    if name.startswith("cifar10"):
        assert cfg.data.name == "cifar10" and cfg.data.crop_padding == 4 and cfg.data.flip
        assert cfg.method.attack.eps == pytest.approx(8 / 255) and cfg.method.attack.step_size == pytest.approx(2 / 255)
        assert cfg.train.epochs == 100 and cfg.schedule.milestones == [0.75, 0.9]
        assert cfg.optim.lr == 0.1 and cfg.optim.weight_decay == 5e-4 and cfg.data.batch_size == 128
