"""Every bundled config loads, validates, and builds its model and method."""

from __future__ import annotations

import pytest
import torch

from robustlab.config import bundled_config_names, load_config
from robustlab.methods import create_method
from robustlab.models import MODELS

NAMES = bundled_config_names()


def test_the_issue_configs_are_bundled() -> None:
    for model in ("preact_resnet18", "wrn34_10"):
        for method in ("pgd_at", "trades", "mart"):
            assert f"cifar10_{model}_{method}" in NAMES
    assert {"digits_natural", "digits_pgd_at", "digits_trades", "digits_mart"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_bundled_config_is_valid(name: str) -> None:
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.model.name in MODELS
    method = create_method(cfg.method, torch.Generator())
    assert method.attack.eps > 0
    if name.startswith("cifar10_"):
        assert cfg.method.attack.eps == pytest.approx(8 / 255) and cfg.data.crop_padding == 4 and cfg.data.flip


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory: pytest.TempPathFactory) -> str:
    """16 random 32×32 RGB images per split, as a .npz the paper configs can read instead of CIFAR-10."""
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("npz") / "tiny.npz"
    arrays = {}
    for split in ("train", "test"):
        arrays[f"x_{split}"] = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
        arrays[f"y_{split}"] = np.arange(16) % 10
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("cifar10_") and "afd" not in n and "finetune" not in n])
def test_paper_config_trains_a_few_steps_on_tiny_inputs(name: str, tiny_cifar: str, tmp_path) -> None:
    """The paper settings end to end (augmentation, schedule, bf16 autocast, channels_last, the method),
    on a narrow version of the architecture and 16 random images, so it runs on a CPU in seconds."""
    from robustlab.train import train

    cfg = load_config(name)
    shrink = {
        "preact_resnet18": ["model.options={width: 4}"], "resnet18": ["model.options={width: 4}"],
        "vgg16_bn": ["model.options={width: 4}"],
        "wrn34_10": ["model.name=wide_resnet", "model.options={depth: 10, widen_factor: 1}"],
    }[cfg.model.name]
    cfg = load_config(name, [
        f"out_dir={tmp_path}", "data.name=npz", f"data.root={tiny_cifar}", "data.batch_size=8", "data.eval_examples=8",
        "train.epochs=1", "train.eval_pgd_steps=1", "train.progress=false", "method.attack.steps=1", *shrink,
    ])
    record = train(cfg, log=lambda _: None)
    assert record["epoch"] == 1 and record["train_loss"] == record["train_loss"]  # finite, not NaN


# The official schedules' decay epochs, 0-based (the official codes decay when ``epoch >= 75``
# counting from 0): FSR x0.1 at 75, 90 of 100; ANCRA x0.1 at 75, 90, 100 of 120; AFD (and vanilla
# fine-tuning, same schedule) a new rate at 10, 12, 14, 16, 18 of 20; the standard recipe of
# PGD-AT/TRADES/MART (and UAD-AT, natural, built on it) x0.1 at 50 and 75 of 100.
OFFICIAL_DECAYS = {"ancra": [75, 90, 100], "fsr": [75, 90], "finetune": [10, 12, 14, 16, 18], "standard": [50, 75]}


def _family(name: str) -> str:
    for key, family in (("ancra", "ancra"), ("fsr", "fsr"), ("afd", "finetune"), ("finetune", "finetune")):
        if key in name:
            return family
    return "standard"


def _observed_decays(name: str, steps_per_epoch: int = 3) -> tuple[list[int], list[float]]:
    """Epochs (0-based) whose first step changes the rate, and the factor of each epoch; checks no mid-epoch change."""
    from robustlab.train.optim import lr_factor

    cfg = load_config(name)
    epochs = cfg.train.epochs
    total = epochs * steps_per_epoch
    factors = [lr_factor(s, total, steps_per_epoch, cfg.schedule) for s in range(total)]
    per_epoch = [factors[e * steps_per_epoch: (e + 1) * steps_per_epoch] for e in range(epochs)]
    assert all(len(set(f)) == 1 for f in per_epoch), f"{name}: the rate changes inside an epoch"
    rates = [f[0] for f in per_epoch]
    return [e for e in range(1, epochs) if rates[e] != rates[e - 1]], rates


PIECEWISE = [n for n in NAMES if load_config(n).schedule.name == "piecewise"]


@pytest.mark.parametrize("name", PIECEWISE)
def test_learning_rate_decays_at_the_configured_epoch_boundaries(name: str) -> None:
    """Each milestone m of E epochs decays at the start of 0-based epoch m·E (an integer in every bundled
    config); the CIFAR-10 paper configs decay at their official epochs."""
    cfg = load_config(name)
    epochs = cfg.train.epochs
    wanted = [m * epochs for m in cfg.schedule.milestones]
    assert all(abs(w - round(w)) < 1e-6 for w in wanted), f"{name}: milestones fall inside an epoch: {wanted}"
    decays, rates = _observed_decays(name)
    assert decays == [round(w) for w in wanted]
    if name.startswith("cifar10_"):
        assert decays == OFFICIAL_DECAYS[_family(name)], name
        first = rates[decays[0] - 1]
        assert rates[0] == first == 1.0 and decays[0] == rates.count(1.0)  # e.g. 75 epochs at the base rate
