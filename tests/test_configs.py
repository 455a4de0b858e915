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
    if name.startswith("cifar10"):
        assert cfg.method.attack.eps == pytest.approx(8 / 255) and cfg.data.crop_padding == 4 and cfg.data.flip
