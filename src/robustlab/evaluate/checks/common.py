"""What every check shares: the EVALUATION.md reference, the default thresholds, the probe's attack settings,
number formatting and the one PGD verdict the attack checks build on."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from robustlab.attacks.pgd import pgd
from robustlab.evaluate.flags import Flag

DOC = "docs/EVALUATION.md, check"

# Default thresholds, shared by the public checks and run_checks (reasons in each check's docstring).
RANDOMNESS_TOLERANCE = 1e-5
GRADIENT_THRESHOLD = 0.0
MONOTONICITY_TOLERANCE = 0.005
TOLERANCE_SAMPLES = 1
PLATEAU = 0.1
BLACK_BOX_THRESHOLD = 0.01
SQUARE_PROBE_THRESHOLD = 0.02
BLACK_BOX_MIN_SAMPLES = 3
PROBABILITY_TOLERANCE = 1e-3
ROUNDING = 1e-12  # float64 rounding of a difference of two count ratios is ~1e-16; 1/n is far above for any n
# The probe attacks of run_checks (announced with their cost by announce_checks).
PROBE_STEPS = (10, 50)
PROBE_RESTARTS = 3
SWEEP_MULTIPLIERS = (1, 2, 4, 8)
SWEEP_STEPS = 20
SQUARE_QUERIES = 1000
# Indicators of attack failure (check 9; Pintor et al. 2022, github.com/pralab/IndicatorsOfAttackFailure,
# src/indicators/indicators.py; reasons in checks/indicators.py and EVALUATION.md).
SILENT_SUCCESS_THRESHOLD = 0.0
INCOMPLETE_WINDOW = 10
INCOMPLETE_TOLERANCE = 0.05
INCOMPLETE_THRESHOLD = 0.05
UNSTABLE_DRAWS = 16
UNSTABLE_WIDTH = 8 / 255
UNSTABLE_THRESHOLD = 0.3
UNCONSTRAINED_THRESHOLD = 0.0
TRANSFER_FAILURE_THRESHOLD = 0.95
TRANSFER_FAILURE_MIN_SAMPLES = 10


def steps_run_names(steps: tuple[int, int] = PROBE_STEPS, restarts: int = PROBE_RESTARTS) -> tuple[str, str, str]:
    """The names of check 3's PGD runs: few steps, many steps, few steps with restarts
    (``pgd-10``, ``pgd-50``, ``pgd-10x3``)."""
    few, many = steps
    return f"pgd-{few}", f"pgd-{many}", f"pgd-{few}x{restarts}"


# the gradient attacks whose worst case the Square probe of run_checks is compared with: check 3's runs and the sweep's
PROBE_GRADIENT_ATTACKS = (*steps_run_names(), f"pgd-{SWEEP_STEPS}")


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def and_list(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def exceeds(value: float, limit: float) -> bool:
    """``value > limit`` beyond float rounding: the checks compare differences of count ratios (0.505 − 0.5 is
    0.0050000000000000044 in floats), which must not cross a documented limit they only touch (:data:`ROUNDING`)."""
    return value > limit + ROUNDING


def flag_above(limit: float, code: str, message: str, value: float) -> Flag | None:
    """``Flag(code, message, value)`` when ``value`` exceeds ``limit`` (:func:`exceeds`), else None."""
    return Flag(code, message, value) if exceeds(value, limit) else None


def fraction_true(mask: torch.Tensor) -> float:
    """Exact fraction of True entries (count / n, not a float32 mean); 0 for an empty mask."""
    return int(mask.sum()) / mask.numel() if mask.numel() else 0.0


def accurate_under_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, *, eps: float, norm: str, steps: int,
    step_size: float, restarts: int = 1, generator: torch.Generator | None,
) -> torch.Tensor:
    """Per sample: correct at the clean input and still correct after PGD (attacked only where correct)."""
    robust = torch.zeros_like(correct)
    todo = correct.nonzero().squeeze(1)
    if todo.numel() == 0:
        return robust
    x_adv = pgd(
        model, x[todo], y[todo], eps=eps, norm=norm, steps=steps, step_size=step_size, restarts=restarts,
        generator=generator,
    )
    with torch.no_grad():
        robust[todo] = model(x_adv).argmax(1) == y[todo]
    return robust


def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y
