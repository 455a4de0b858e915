"""Gradient-masking checks (EVALUATION.md checks 1-6): each fires on a planted case and stays quiet
on a small adversarially trained digits model.

One model is trained per module (PGD-AT at eps 0.1 on sklearn digits, a few seconds on one thread);
the planted cases wrap it (input rounding, noise, softmax) or are tiny hand-built modules.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from toy_models import FarIsSafe, Quantised, pgd_at_digits_cnn

from robustlab.attacks import fgsm, pgd
from robustlab.evaluate.checks import (
    check_black_box,
    check_eps_sweep,
    check_gradients,
    check_monotonicity,
    check_probability_outputs,
    check_randomness,
    check_square_probe,
    check_steps_monotone,
    run_checks,
)
from robustlab.evaluate.flags import Flag

EPS = 0.1
STEP = 0.025


@pytest.fixture(scope="module")
def digits() -> dict[str, torch.Tensor]:
    """PGD-AT small CNN (eps 0.1, 3-step PGD, 10 epochs on 1,400 digits) and a 128-sample held-out probe."""
    model, x, y = pgd_at_digits_cnn()
    return {"model": model, "x": x, "y": y}


class Noisy(nn.Module):
    """Adds Gaussian noise to the logits in every mode (a randomized defense)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.base(x)
        return z + torch.randn_like(z)


class Softmax(nn.Module):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x).softmax(dim=1)


def _grey(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n, 1, 8, 8), 0.5), torch.zeros(n, dtype=torch.long)


def _codes(flags: list[Flag]) -> set[str]:
    return {f.code for f in flags}


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --- quiet case -------------------------------------------------------------------------------------


def test_run_checks_is_quiet_on_an_adversarially_trained_model_and_restores_the_mode(digits) -> None:
    model, x, y = digits["model"], digits["x"], digits["y"]
    model.train()
    try:
        flags, values = run_checks(model, x, y, eps=EPS, norm="linf", step_size=STEP)
        assert model.training
    finally:
        model.eval()
    assert flags == [], [f.message for f in flags]
    assert values["n_probe"] == 128 and values["clean_acc"] > 0.9
    assert values["logit_change"] == 0.0 and values["masked_gradient_fraction"] == 0.0
    accs = [row["robust_acc"] for row in values["eps_sweep"]]
    assert [row["multiplier"] for row in values["eps_sweep"]] == [1, 2, 4, 8]
    assert accs == sorted(accs, reverse=True) and accs[0] > 0.5 and accs[-1] == 0.0
    assert values["black_box"]["source"] == "probe" and values["black_box"]["fraction"] <= 0.02
    assert set(values["steps_monotone"]) == {"pgd-10", "pgd-50", "pgd-10x3"}
    assert values["probability_outputs"] is False
    assert json.loads(json.dumps(values)) == values  # ready for the record
    # Same generator seed, same values: the checks are deterministic.
    again = run_checks(model, x, y, eps=EPS, norm="linf", step_size=STEP, generator=_gen())
    assert again == (flags, values)


# --- (a) input quantisation -------------------------------------------------------------------------


def test_quantised_model_fires_zero_gradients_black_box_and_plateau(digits) -> None:
    model = Quantised(digits["model"])
    x, y = digits["x"], digits["y"]
    flags, values = run_checks(model, x, y, eps=EPS, norm="linf", step_size=STEP)
    codes = _codes(flags)
    assert {"zero_gradients", "black_box", "eps_plateau"} <= codes
    assert "randomness" not in codes and "probabilities" not in codes
    assert values["masked_gradient_fraction"] == 1.0
    bb = next(f for f in flags if f.code == "black_box")
    assert bb.value == values["black_box"]["fraction"] > 0.05
    missed = "pgd-10, pgd-50, pgd-10x3 and pgd-20 missed"
    assert bb.message.startswith(f"Square broke {100 * bb.value:.1f}% of samples that {missed}")

    grad = check_gradients(model, x[:16], y[:16])
    assert grad is not None and grad.value == 1.0 and "100.0%" in grad.message
    assert check_gradients(digits["model"], x[:16], y[:16]) is None


def test_square_probe_standalone_fires_on_quantised_model_only(digits) -> None:
    x, y = digits["x"][:64], digits["y"][:64]
    quantised = Quantised(digits["model"])
    flags, values = check_square_probe(quantised, x, y, eps=EPS, norm="linf", queries=300, generator=_gen())
    assert _codes(flags) == {"black_box"} and values["square_broke"] >= 3
    flags, values = check_square_probe(digits["model"], x, y, eps=EPS, norm="linf", queries=300, generator=_gen())
    assert flags == [] and values["source"] == "probe"
    flags, values = check_square_probe(quantised, x, y, eps=1.0, norm="l2", queries=300, generator=_gen())
    assert _codes(flags) == {"black_box"} and values["source"] == "probe" and values["square_broke"] >= 3
    flags, values = check_square_probe(digits["model"], x, y, eps=1.0, norm="l2", queries=300, generator=_gen())
    assert flags == [] and values["source"] == "probe"


# --- (b) randomness ---------------------------------------------------------------------------------


def test_randomness_fires_on_a_noisy_model_and_not_on_train_mode_dropout(digits) -> None:
    x = digits["x"][:32]
    flag = check_randomness(Noisy(digits["model"]), x)
    assert flag is not None and flag.code == "randomness" and flag.value > 0.01
    assert check_randomness(digits["model"], x) is None
    dropout = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10)).train()
    assert check_randomness(dropout, x) is None  # eval mode switches dropout off...
    assert dropout.training  # ...and the previous mode comes back


# --- (c) probabilities ------------------------------------------------------------------------------


def test_probability_outputs_flagged_for_softmax_not_for_logits_or_log_probabilities(digits) -> None:
    x = digits["x"][:32]
    with torch.no_grad():
        logits = digits["model"](x)
    flag = check_probability_outputs(logits.softmax(1))
    assert flag is not None and flag.code == "probabilities" and "return logits" in flag.message
    assert check_probability_outputs(logits) is None
    assert check_probability_outputs(logits.log_softmax(1)) is None
    assert check_probability_outputs(logits.softmax(1) * 0.9) is None  # rows do not sum to 1


def test_run_checks_flags_a_softmax_model(digits) -> None:
    x, y = digits["x"][:32], digits["y"][:32]
    flags, _ = run_checks(Softmax(digits["model"]), x, y, eps=EPS, norm="linf", step_size=STEP, square_queries=100)
    assert "probabilities" in _codes(flags)


# --- (d) monotonicity -------------------------------------------------------------------------------

REALISTIC = {
    "fgsm": 0.61, "pgd-10": 0.52, "pgd-50": 0.515, "cw-20": 0.50, "apgd-ce": 0.49, "apgd-t": 0.47, "square": 0.56,
    "autoattack": 0.465,
}


def test_monotonicity_quiet_on_realistic_numbers() -> None:
    assert check_monotonicity(0.84, REALISTIC) == []
    assert check_monotonicity(0.84, {**REALISTIC, "pgd-50": 0.524}) == []  # within 0.005


@pytest.mark.parametrize(
    "changes, pair",
    [
        ({"pgd-10": 0.65}, ("pgd-10", "fgsm")),
        ({"pgd-50": 0.55}, ("pgd-50", "pgd-10")),
        ({"autoattack": 0.53}, ("autoattack", "pgd-10")),
        ({"autoattack+": 0.475}, ("autoattack+", "autoattack")),  # the stronger variant may not be weaker
        ({"fgsm": 0.90}, ("fgsm", "clean")),
        ({"cw-20": 0.70}, ("cw-20", "fgsm")),
    ],
)
def test_monotonicity_flags_planted_violations(changes: dict[str, float], pair: tuple[str, str]) -> None:
    flags = check_monotonicity(0.84, {**REALISTIC, **changes})
    assert flags and all(f.code == "monotonicity" for f in flags)
    weaker, stronger = pair
    assert any(f.message.startswith(f"{weaker} accuracy") and f"above {stronger} accuracy" in f.message for f in flags)


def test_monotonicity_tolerance_is_at_least_one_sample() -> None:
    accs = {"fgsm": 0.50, "pgd-20": 0.51}
    assert len(check_monotonicity(0.9, accs)) == 1
    assert check_monotonicity(0.9, accs, n_samples=64) == []  # 0.01 < 1/64


def test_steps_monotone_fires_on_a_stateful_model_only() -> None:
    x, y = _grey()
    # 4 forwards (clean, PGD-10's two iterates, its verdict) before the model turns: PGD-50 then finds nothing.
    stateful = FarIsSafe(flip_after=4)
    flags, values = check_steps_monotone(stateful, x, y, eps=EPS, norm="linf", step_size=STEP, generator=_gen())
    assert values["pgd-10"] == 0.0 and values["pgd-50"] == 1.0
    assert [f.code for f in flags] == ["monotonicity", "monotonicity"]
    assert "more steps" in flags[0].message and "more restarts" in flags[1].message
    flags, values = check_steps_monotone(FarIsSafe(), x, y, eps=EPS, norm="linf", step_size=STEP, generator=_gen())
    assert flags == [] and set(values.values()) == {0.0}


# --- eps sweep --------------------------------------------------------------------------------------


def test_eps_sweep_flags_accuracy_rising_with_eps_and_a_plateau() -> None:
    x, y = _grey()
    flags, sweep = check_eps_sweep(FarIsSafe(), x, y, eps=EPS, norm="linf", generator=_gen())
    assert list(sweep) == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert list(sweep.values()) == [0.0, 0.0, 1.0, 1.0]
    assert _codes(flags) == {"eps_plateau", "eps_not_monotone"}
    plateau = next(f for f in flags if f.code == "eps_plateau")
    assert plateau.value == 1.0 and "8x the budget" in plateau.message


def test_eps_sweep_clips_linf_radius_at_one(digits) -> None:
    x, y = digits["x"][:16], digits["y"][:16]
    flags, sweep = check_eps_sweep(digits["model"], x, y, eps=0.3, norm="linf", generator=_gen())
    assert list(sweep) == pytest.approx([0.3, 0.6, 1.0]) and flags == []


# --- (5) black box from verdicts and from a suite ---------------------------------------------------


def test_black_box_from_verdicts() -> None:
    gradient = torch.tensor([1, 0] * 20).bool()  # 20 of 40 survive the gradient attacks
    square = gradient.clone()
    square[:6] = False  # Square breaks 3 of them (and 0, 2, 4 were broken anyway)
    flag = check_black_box(gradient, square)
    assert flag is not None and flag.value == 3 / 40 and flag.message.startswith("Square broke 7.5%")
    assert check_black_box(gradient, square, threshold=0.075) is None
    assert check_black_box(gradient, square, min_samples=4) is None
    square[4] = True  # 2 samples: 5% but too few to tell from noise
    assert check_black_box(gradient, square) is None
    assert check_black_box(gradient, gradient) is None
    assert check_black_box(gradient & square, square) is None  # Square only broke what PGD broke


def _suite(model: nn.Module, x: torch.Tensor, y: torch.Tensor, square_extra: int) -> dict:
    """A suite result on the probe in the runner's layout (per-sample ``broken_by``: -2 clean-wrong,
    -1 robust, 0 broken): real fgsm and pgd-20 verdicts; Square planted as the gradient worst case
    with ``square_extra`` more samples broken."""
    g = _gen()
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    adversarial = {
        "fgsm": fgsm(model, x, y, eps=EPS),
        "pgd-20": pgd(model, x, y, eps=EPS, steps=20, step_size=STEP, generator=g),
    }
    robust = {}
    for name, xa in adversarial.items():
        with torch.no_grad():
            robust[name] = clean & (model(xa).argmax(1) == y)
    square = robust["pgd-20"] & robust["fgsm"]
    square[square.nonzero().squeeze(1)[:square_extra]] = False
    robust["square"] = square
    broken_by = {k: torch.where(clean, torch.where(v, -1, 0), -2).tolist() for k, v in robust.items()}
    return {
        "clean_acc": clean.float().mean().item(),
        "attacks": {k: {"robust_acc": v.float().mean().item()} for k, v in robust.items()},
        "per_sample": {"clean": clean.int().tolist(), "broken_by": broken_by},
    }


def test_run_checks_uses_the_suite_for_monotonicity_and_black_box(digits) -> None:
    model, x, y = digits["model"], digits["x"][:64], digits["y"][:64]
    quiet = _suite(model, x, y, square_extra=0)
    flags, values = run_checks(model, x, y, eps=EPS, norm="linf", step_size=STEP, suite_result=quiet)
    assert flags == [], [f.message for f in flags]
    assert values["black_box"] == {"source": "suite", "gradient_attacks": ["fgsm", "pgd-20"], "fraction": 0.0}

    planted = _suite(model, x, y, square_extra=4)
    planted["attacks"]["pgd-20"]["robust_acc"] = planted["attacks"]["fgsm"]["robust_acc"] + 0.05
    flags, values = run_checks(model, x, y, eps=EPS, norm="linf", step_size=STEP, suite_result=planted)
    assert [f.code for f in flags] == ["monotonicity", "black_box"]
    assert flags[1].value == values["black_box"]["fraction"] == 4 / 64
    assert "fgsm and pgd-20 missed" in flags[1].message


def test_run_checks_reads_flat_per_sample_verdicts(digits) -> None:
    model, x, y = digits["model"], digits["x"][:16], digits["y"][:16]
    per_sample = {"clean": [1] * 16, "pgd-20": [1] * 8 + [0] * 8, "square": [0] * 3 + [1] * 5 + [0] * 8}
    suite = {"clean_acc": 1.0, "attacks": {"pgd-20": {"robust_acc": 0.5}, "square": {"robust_acc": 5 / 16}}}
    flat = {**suite, "per_sample": per_sample}
    flags, values = run_checks(model, x, y, eps=EPS, norm="linf", step_size=STEP, suite_result=flat)
    assert [f.code for f in flags] == ["black_box"] and values["black_box"]["fraction"] == 3 / 16
    # Without per-sample verdicts the suite's Square cannot be compared: the probe runs instead.
    flags, values = run_checks(model, x, y, eps=EPS, norm="linf", step_size=STEP, suite_result=suite)
    assert flags == [] and values["black_box"]["source"] == "probe"


@pytest.mark.parametrize("drop, fires", [(0.04, True), (0.004, False)])
def test_run_checks_reads_the_square_drop_inside_autoattack(digits, drop: float, fires: bool) -> None:
    model, x, y = digits["model"], digits["x"][:16], digits["y"][:16]
    after = {"apgd-ce": 0.62, "apgd-t": 0.61, "fab-t": 0.61, "square": 0.61 - drop}
    autoattack = {"robust_acc": 0.61 - drop, "robust_acc_after": after}
    suite = {"clean_acc": 0.95, "n_examples": 1000, "attacks": {"autoattack": autoattack}}
    flags, values = run_checks(model, x, y, eps=EPS, norm="linf", step_size=STEP, suite_result=suite)
    assert [f.code for f in flags] == (["black_box"] if fires else [])
    assert values["black_box"]["group"] == "autoattack" and values["black_box"]["fraction"] == pytest.approx(drop)
    if fires:
        assert "apgd-ce, apgd-t and fab-t (inside autoattack) missed" in flags[0].message


def test_flags_are_json_ready() -> None:
    flag = check_black_box([1, 1], [0, 1], min_samples=1)
    assert flag is not None and flag.to_dict() == {"code": "black_box", "message": flag.message, "value": 0.5}
    assert json.loads(json.dumps(flag.to_dict()))["value"] == 0.5


def test_one_classifier_of_attack_names_serves_the_suite_and_the_checks() -> None:
    """``evaluate.names`` parses step counts for the suite and tells gradient attacks apart for the checks."""
    from robustlab.evaluate.names import attack_family, is_gradient, is_iterative_gradient
    from robustlab.evaluate.suite import parse_attack_name

    assert [attack_family(n) for n in ("PGD", "cw-7", " pgd-50 ", "pgd-10x3", "adaptive")] == [
        ("pgd", 20), ("cw", 7), ("pgd", 50), ("pgd-10x3", None), ("adaptive", None)]
    for name in ("pgd", "cw-7", "apgd-t", "fgsm", "autoattack"):
        family, steps = attack_family(name)
        assert parse_attack_name(name) == (family, steps if family in ("pgd", "cw") else None)
    assert [is_gradient(n) for n in ("fgsm", "pgd-5", "apgd-ce", "fab-t", "apgd-ce-t", "square", "autoattack")] == [
        True, True, True, True, True, False, False]
    assert not is_iterative_gradient("fgsm") and is_iterative_gradient("cw-3")


def test_the_square_probe_names_the_gradient_runs_it_is_compared_with(digits) -> None:
    """The probe's label is built from the same constants as the runs it names (check 3's runs and the sweep's)."""
    from robustlab.evaluate.checks.common import PROBE_RESTARTS, PROBE_STEPS, SWEEP_STEPS

    _, values = run_checks(digits["model"], digits["x"][:8], digits["y"][:8], eps=EPS, norm="linf", step_size=STEP,
                           square_queries=20)
    few, many = PROBE_STEPS
    assert list(values["steps_monotone"]) == [f"pgd-{few}", f"pgd-{many}", f"pgd-{few}x{PROBE_RESTARTS}"]
    label = values["black_box"]["gradient_attacks"]
    assert label == f"pgd-{few}, pgd-{many}, pgd-{few}x{PROBE_RESTARTS} and pgd-{SWEEP_STEPS}"
