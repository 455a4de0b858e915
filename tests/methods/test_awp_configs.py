"""The bundled AWP and cyclic-schedule configs carry the released codes' settings, each with its source cited.

Sources: csdongxian/AWP @a7acf5d (AT_AWP/train_cifar10.py: ``--awp-gamma 0.01``, ``--awp-warmup 0``, 200
epochs piecewise 0.1 → /10 at 50% → /100 at 75%; trades_AWP/train_trades_cifar.py: ``--awp-gamma 0.005``,
``--awp-warmup 10`` tested on 1-based epochs, lr x0.1 at ``epoch >= 100`` and x0.01 at ``epoch >= 150``
of 1..200) and locuslab/fast_adversarial @54f7287 (CIFAR10/train_fgsm.py: CyclicLR up and down over half
the steps each, so the peak is mid-training).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from robustlab.config import bundled_config_names, load_config
from robustlab.train.optim import decay_epochs, lr_factor

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# name -> (gamma, awp_warmup, epochs, 0-based decay epochs or None to skip)
RELEASED = {
    "cifar10_preact_resnet18_pgd_at_awp": (0.01, 0, 200, [100, 150]),
    "cifar10_wrn34_10_trades_awp": (5e-3, 9, 200, [99, 149]),
    "digits_pgd_at_awp": (0.01, 0, None, None),
    "digits_trades_awp": (5e-3, 0, None, None),
}


def test_every_bundled_awp_config_is_pinned() -> None:
    assert sorted(n for n in bundled_config_names() if "awp" in n) == sorted(RELEASED)


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_awp_configs_carry_the_released_settings(name: str) -> None:
    gamma, warmup, epochs, decays = RELEASED[name]
    cfg = load_config(name)
    assert cfg.method.options["gamma"] == pytest.approx(gamma) and cfg.method.options["awp_warmup"] == warmup
    if epochs is not None:
        assert cfg.train.epochs == epochs and decay_epochs(epochs, cfg.schedule) == decays
    text = (CONFIGS / f"{name}.yaml").read_text()
    source = "trades_AWP/train_trades_cifar.py" if "trades" in name else "AT_AWP/train_cifar10.py"
    assert "csdongxian/AWP" in text and source in text and "--awp-gamma" in text, f"{name} does not cite its source"


def test_fgsm_rs_cyclic_schedule_peaks_mid_training_as_the_released_code() -> None:
    cfg = load_config("cifar10_preact_resnet18_fgsm_rs")
    total = 1000
    factors = [lr_factor(s, total, 10, cfg.schedule) for s in range(total)]
    peak = max(range(total), key=factors.__getitem__)
    assert abs(peak - total // 2) <= 1  # CyclicLR(step_size_up = step_size_down = steps / 2)
    text = (CONFIGS / "cifar10_preact_resnet18_fgsm_rs.yaml").read_text()
    assert "locuslab/fast_adversarial" in text and "CyclicLR" in text
