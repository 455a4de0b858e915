"""Every documented threshold of the evaluation, tried on each side of its boundary (issue 33, item 8).

Each test plants a value just inside and just outside one threshold, written here as the documented
number (never imported from the code, so a moved constant cannot move the test with it), and reads the
threshold through the path the evaluation takes: a check's default argument, ``run_checks``, the runner's
ball test, the verification's flag, the surrogate's gates. The planted values sit within a factor 2 of
the boundary, so moving any constant 10x up or down flips one of the two cases: ``benchmarks/mutants.py``
runs those moves (mutants ``thr_*``) against this file. The attacks of ``run_checks`` are replaced by
planted verdicts where a threshold judges their outcome, so no test trains or attacks anything.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from robustlab.attacks.counting import count_passes
from robustlab.data import ImageDataset
from robustlab.evaluate.checks import (
    check_black_box,
    check_gradients,
    check_monotonicity,
    check_probability_outputs,
    check_randomness,
    run_checks,
)
from robustlab.evaluate.checks.indicators import run_indicators
from robustlab.evaluate.checks.trace import SuiteTrace
from robustlab.evaluate.masking import inspect_masking
from robustlab.evaluate.progress import Progress
from robustlab.evaluate.runner import run_suite, summarise, within_threat_model
from robustlab.evaluate.suite import AttackSpec
from robustlab.evaluate.verify import gap_flag, gap_summary
from robustlab.runs.record import ROBUST

# The documented values (the reference for each is named in the test that uses it).
BALL_TOLERANCE = 1e-5  # EVALUATION.md §2: "inside the ε-ball and [0, 1] (tolerance 1e-5)"
GAP_LIMIT = 0.005  # EVALUATION.md §2 (`--verify K`): "the interval's upper end exceeds 0.5 points"
RANDOMNESS_TOLERANCE = 1e-5  # check_randomness: "tolerance (default 1e-5)"
FORWARD_TOLERANCE = 1e-5  # EVALUATION.md §5: "relative change at most 1e-5"
GRADIENT_CHANGE = 1e-3  # EVALUATION.md §5: "different from it by more than 0.1%"
MONOTONICITY_TOLERANCE = 0.005  # check_monotonicity: "tolerance (default 0.005, half a point)"
PROBABILITY_TOLERANCE = 1e-3  # check_probability_outputs: "within tolerance (default 1e-3)"
PROGRESS_INTERVAL_S = 30.0  # EVALUATION.md §3: "a line appears at most every 30 seconds"
# check 9, the indicators of attack failure (EVALUATION.md §6; Pintor et al.'s src/indicators/indicators.py)
INCOMPLETE_WINDOW = 10  # "over its last 10 evaluations" (incomplete_optimization_indicator: num_steps = 10)
INCOMPLETE_TOLERANCE = 0.05  # "by more than 5% of the path's range" (incomplete_optimization_indicator: 0.05)
INCOMPLETE_SHARE = 0.05  # "on more than 5% of the probe"
UNSTABLE_WIDTH = 8 / 255  # "uniform noise of width 8/255" (unstable_predictions_indicator: radius 8 / 255)
UNSTABLE_THRESHOLD = 0.3  # "a mean relative change above 0.3"
UNSTABLE_DRAWS = 16  # "16 noise draws"
TRANSFER_FAILURE = 0.95  # "more than 95% of them"
TRANSFER_MIN_SAMPLES = 10  # "at least 10 probe samples"

INSIDE, OUTSIDE = 0.5, 2.0  # planted values: this many times a tolerance (the factor-2 margin of the module docs)
EPS = 8 / 255


def _codes(flags: list) -> set[str]:
    return {f.code for f in flags}


# --- the ε-ball of a break (runner.TOLERANCE) ---------------------------------------------------------------


def _overshoot(norm: str, where: str, factor: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(x, x_adv, eps)`` with ``x_adv`` beyond the ball (``where="ball"``) or below 0 / above 1 (``"low"``,
    ``"high"``) by ``factor`` times the ball tolerance, in one pixel of a float32 image."""
    eps = EPS if norm == "linf" else 0.5
    start = {"ball": 0.5, "low": 0.0, "high": 1.0}[where]
    x = torch.full((2, 1, 2, 2), start)
    x_adv = x.clone()
    past = factor * BALL_TOLERANCE
    x_adv[:, 0, 0, 0] += {"ball": eps + past, "low": -past, "high": past}[where]
    return x, x_adv, eps


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("where", ["ball", "low", "high"])
def test_ball_tolerance_keeps_half_a_tolerance_and_refuses_two(norm: str, where: str) -> None:
    """runner.TOLERANCE (EVALUATION.md §2, 1e-5): a point 0.5 tolerance outside the ε-ball or [0, 1] is
    inside the threat model, one 2 tolerances outside is not (``<=``: the boundary belongs to the ball)."""
    for factor, inside in ((INSIDE, True), (OUTSIDE, False)):
        x, x_adv, eps = _overshoot(norm, where, factor)
        assert within_threat_model(x, x_adv, eps, norm).tolist() == [inside, inside], (factor, norm, where)


class MovedIsWrong(nn.Module):
    """Class 0 at the dataset's one clean image (every pixel 128/255), class 1 once any pixel moved by more
    than 1e-3: every point an attack returns is misclassified, so only the ball decides a break."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moved = (x - 128 / 255).flatten(1).abs().amax(1)
        return torch.stack([1 - 1000 * moved, torch.zeros_like(moved)], 1)


def _overshooting_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, factor: float) -> torch.Tensor:
    """A planted attack: one pixel ``eps + factor * tolerance`` away, everything else unchanged."""
    x_adv = x.clone()
    x_adv[:, 0, 0, 0] += EPS + factor * BALL_TOLERANCE
    return x_adv


@pytest.mark.parametrize("factor, counted", [(INSIDE, True), (OUTSIDE, False)])
def test_runner_counts_a_break_just_inside_the_ball_and_flags_one_just_outside(factor: float, counted: bool) -> None:
    """runner.TOLERANCE through the runner: an attack overshooting ε by 0.5 tolerance breaks every sample; by 2
    tolerances it breaks none, and the record counts its points out of bounds with the ``attack_bug`` flag."""
    data = ImageDataset(images=torch.full((3, 1, 2, 2), 128, dtype=torch.uint8),
                        labels=torch.zeros(3, dtype=torch.long), classes=["a", "b"], name="grey")
    spec = AttackSpec("overshoot", functools.partial(_overshooting_attack, factor=factor), {}, uses_generator=False)
    state = run_suite(MovedIsWrong(), data, [spec], eps=EPS, norm="linf", batch_size=3, device=torch.device("cpu"),
                      seed=0)
    result = summarise(state, [spec])
    assert result["clean_acc"] == 1.0
    assert result["robust_acc"] == (0.0 if counted else 1.0)
    assert result["attacks"]["overshoot"]["out_of_bounds"] == (0 if counted else 3)
    assert ("attack_bug" in {f["code"] for f in result["flags"]}) is not counted


# --- the verification's gap limit (verify.GAP_LIMIT) ----------------------------------------------------------


@pytest.mark.parametrize("broken, flagged", [(5, False), (6, True)])
def test_verify_gap_flag_fires_only_above_half_a_point(broken: int, flagged: bool) -> None:
    """verify.GAP_LIMIT (EVALUATION.md §2, 0.5 points): every one of 100 survivors of 1,000 images verified, so
    the interval is the point ``broken / 1000``: 5 broken (0.5 points, on the limit) is quiet, 6 (0.6) flags."""
    summary = gap_summary(n=1000, n_survivors=100, sampled=100, broken=broken)
    assert summary["gap_ci95"] == [broken / 1000, broken / 1000]
    flag = gap_flag(summary)
    assert (flag is not None) is flagged
    if flag is not None:
        assert flag.code == "verify_gap" and flag.value == pytest.approx(0.006)


# --- check 1: randomness (common.RANDOMNESS_TOLERANCE) --------------------------------------------------------


class Drifting(nn.Module):
    """Fixed logits below 1 in size (so the change is relative to 1) plus ``drift`` times the number of
    earlier forwards: two forwards of the same batch differ by exactly ``drift``."""

    def __init__(self, drift: float) -> None:
        super().__init__()
        self.drift, self.calls = drift, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.stack([0.5 * x.flatten(1).mean(1), 0.25 - x.flatten(1).mean(1)], 1) + self.drift * self.calls
        self.calls += 1
        return z


@pytest.mark.parametrize("factor, flagged", [(INSIDE, False), (OUTSIDE, True)])
def test_randomness_check_tolerates_half_its_tolerance_and_flags_twice(factor: float, flagged: bool) -> None:
    """common.RANDOMNESS_TOLERANCE (check 1, 1e-5, ``>``: the tolerance itself is allowed): logits that change
    by 0.5e-5 between two forwards are deterministic enough, by 2e-5 they are flagged."""
    flag = check_randomness(Drifting(factor * RANDOMNESS_TOLERANCE), torch.rand(8, 1, 2, 2))
    assert (flag is not None) is flagged
    if flag is not None:
        assert flag.code == "randomness" and flag.value == pytest.approx(factor * RANDOMNESS_TOLERANCE, rel=0.05)


# --- check 2: zero gradients (common.GRADIENT_THRESHOLD = 0: any sample) ---------------------------------------


class OneSampleDetached(nn.Module):
    """A linear model whose logits are detached, so the input gradient is zero, for the samples whose first
    pixel is exactly 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1)
        z = torch.stack([f.sum(1), -f.sum(1)], 1)
        return torch.where((f[:, :1] == 1.0), z.detach(), z)


@pytest.mark.parametrize("dead, flagged", [(0, False), (1, True)])
def test_zero_gradient_check_flags_a_single_sample_of_128(dead: int, flagged: bool) -> None:
    """common.GRADIENT_THRESHOLD (check 2, 0: "any such sample, as EVALUATION.md asks"): one probe sample of
    128 (0.8%) with a zero input gradient is flagged, none is quiet. 10x of 0 is 0, so its mutant raises it
    to 1% instead."""
    x = torch.rand(128, 1, 2, 2) * 0.9
    x[:dead, 0, 0, 0] = 1.0
    flag = check_gradients(OneSampleDetached(), x, torch.zeros(128, dtype=torch.long))
    assert (flag is not None) is flagged


# --- check 3: monotonicity of a suite's numbers (common.MONOTONICITY_TOLERANCE) --------------------------------


@pytest.mark.parametrize("excess, flagged", [(0.004, False), (0.005, False), (0.006, True)])
def test_monotonicity_tolerates_half_a_point(excess: float, flagged: bool) -> None:
    """common.MONOTONICITY_TOLERANCE (check 3, 0.005, ``>``): PGD-20 above FGSM by 0.4 points is noise, by 0.6
    points it is flagged (no sample count given, so the one-sample floor does not apply). Exactly 0.5 points is
    not flagged although ``0.505 - 0.5`` is 0.0050000000000000044 in floating point (common.exceeds: it was
    flagged before the checks compared beyond float rounding)."""
    flags = check_monotonicity(0.9, {"fgsm": 0.5, "pgd-20": 0.5 + excess})
    assert bool(flags) is flagged
    if flags:
        assert [f.code for f in flags] == ["monotonicity"] and flags[0].message.startswith("pgd-20 accuracy")


# --- checks 3-5 on the probe, as run_checks runs them, with planted attack outcomes ----------------------------


class Confident(nn.Module):
    """Two logits, class 0 far ahead everywhere (every probe sample clean-correct for label 0), with an input
    gradient; not probabilities."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 0.01 * x.flatten(1).sum(1)
        return torch.stack([2 + s, s - 2], 1)


@dataclass
class PlantedProbe:
    """What run_checks' attacks return on an ``n``-sample probe: for each PGD run, keyed by (steps, restarts,
    radius as a multiple of ε, 32 for the unbounded run of check 9), the number of samples still accurate (the
    first ones, of those it attacks); ``square_broke``: how
    many of the samples every PGD run left accurate the Square probe breaks (the first ones)."""

    n: int
    accurate: dict[tuple[int, int, int], int] = field(default_factory=dict)
    default: int = 10
    square_broke: int = 0

    def pgd(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, *, eps: float,
            steps: int, restarts: int = 1, **_: object) -> torch.Tensor:
        """Stands in for ``accurate_under_pgd``."""
        k = self.accurate.get((steps, restarts, round(eps / EPS)), self.default)
        return (torch.arange(self.n) < k) & correct

    def square(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, survivors: torch.Tensor,
               **_: object) -> torch.Tensor:
        """Stands in for ``square_on_survivors``."""
        broke = torch.zeros_like(survivors)
        broke[survivors.nonzero().squeeze(1)[: self.square_broke]] = True
        return broke

    def run(self, monkeypatch: pytest.MonkeyPatch) -> set[str]:
        """``run_checks`` on the probe with these outcomes; the codes of its flags."""
        monkeypatch.setattr("robustlab.evaluate.checks.attacks.accurate_under_pgd", self.pgd)
        monkeypatch.setattr("robustlab.evaluate.checks.indicators.accurate_under_pgd", self.pgd)
        monkeypatch.setattr("robustlab.evaluate.checks.run.square_on_survivors", self.square)
        x = torch.rand(self.n, 1, 2, 2, generator=torch.Generator().manual_seed(0))
        flags, _ = run_checks(Confident(), x, torch.zeros(self.n, dtype=torch.long), eps=EPS, norm="linf",
                              step_size=EPS / 4)
        return _codes(flags)


@pytest.mark.parametrize("more, flagged", [(1, False), (2, True)])
def test_more_steps_may_leave_one_more_sample_accurate_not_two(
    monkeypatch: pytest.MonkeyPatch, more: int, flagged: bool,
) -> None:
    """common.TOLERANCE_SAMPLES (check 3 on the probe, 1 sample): PGD-50 leaving one sample more accurate than
    PGD-10 is sampling noise, two samples are flagged."""
    probe = PlantedProbe(n=200, accurate={(50, 1, 1): 10 + more})
    assert ("monotonicity" in probe.run(monkeypatch)) is flagged


@pytest.mark.parametrize("more, flagged", [(1, False), (2, True)])
def test_a_larger_radius_may_leave_one_more_sample_accurate_not_two(
    monkeypatch: pytest.MonkeyPatch, more: int, flagged: bool,
) -> None:
    """common.TOLERANCE_SAMPLES (check 4, 1 sample): accuracy rising by one sample from ε to 2ε is noise, by two
    it is flagged ``eps_not_monotone`` (the largest radius stays far below the plateau)."""
    probe = PlantedProbe(n=200, accurate={(20, 1, m): 10 + more for m in (2, 4, 8)})
    assert ("eps_not_monotone" in probe.run(monkeypatch)) is flagged


@pytest.mark.parametrize("accurate, flagged", [(9, False), (10, False), (11, True)])
def test_plateau_flags_more_than_a_tenth_accurate_at_eight_eps(
    monkeypatch: pytest.MonkeyPatch, accurate: int, flagged: bool,
) -> None:
    """common.PLATEAU (check 4, 0.1, ``>``): PGD-20 at 8ε leaving 9 or 10 of 100 samples accurate is no plateau,
    11 is (every run leaves the same samples, so nothing else is flagged)."""
    probe = PlantedProbe(n=100, default=accurate)
    codes = probe.run(monkeypatch)
    assert ("eps_plateau" in codes) is flagged
    assert not codes & {"eps_not_monotone", "monotonicity", "black_box"}


@pytest.mark.parametrize("broke, flagged", [(4, False), (5, True)])
def test_square_probe_flags_more_than_two_percent_of_the_probe(
    monkeypatch: pytest.MonkeyPatch, broke: int, flagged: bool,
) -> None:
    """common.SQUARE_PROBE_THRESHOLD (check 5 on the probe, 0.02, ``>``): the Square probe breaking 4 of 200
    samples the PGD runs left (2%, on the threshold, and above the 3-sample floor) is quiet, 5 (2.5%) flags."""
    probe = PlantedProbe(n=200, square_broke=broke)
    assert ("black_box" in probe.run(monkeypatch)) is flagged


@pytest.mark.parametrize("accurate, flagged", [(0, False), (1, True)])
def test_unconstrained_failure_flags_a_single_sample_left_without_a_bound(
    monkeypatch: pytest.MonkeyPatch, accurate: int, flagged: bool,
) -> None:
    """common.UNCONSTRAINED_THRESHOLD (check 9d, 0: "any sample", Pintor et al.'s): PGD-20 with no bound (radius 1,
    run because 8ε = 64/255 is short of it) leaving none of 200 samples accurate is quiet, one is flagged."""
    probe = PlantedProbe(n=200, accurate={(20, 1, 8): 1, (20, 1, 32): accurate})
    assert ("unconstrained_failure" in probe.run(monkeypatch)) is flagged


# --- check 5 on a suite's verdicts (common.BLACK_BOX_THRESHOLD, common.BLACK_BOX_MIN_SAMPLES) ------------------


def _square_beats_gradients(n: int, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Verdicts (True = accurate) on ``n`` samples: the gradient attacks leave half accurate, Square breaks
    ``extra`` of those."""
    gradient = torch.arange(n) < n // 2
    square = gradient & (torch.arange(n) >= extra)
    return gradient, square


@pytest.mark.parametrize("extra, flagged", [(10, False), (11, True)])
def test_black_box_flags_more_than_one_percent(extra: int, flagged: bool) -> None:
    """common.BLACK_BOX_THRESHOLD (check 5, 0.01, ``>``): Square breaking 10 of 1,000 samples the gradient
    attacks missed (1%, on the threshold) is quiet, 11 (1.1%) flags."""
    flag = check_black_box(*_square_beats_gradients(1000, extra))
    assert (flag is not None) is flagged


@pytest.mark.parametrize("extra, flagged", [(2, False), (3, True)])
def test_black_box_needs_three_samples(extra: int, flagged: bool) -> None:
    """common.BLACK_BOX_MIN_SAMPLES (check 5, 3): on 100 samples, Square breaking 2 that the gradient attacks
    missed (2%, above the 1% threshold) is still noise, 3 flag."""
    flag = check_black_box(*_square_beats_gradients(100, extra))
    assert (flag is not None) is flagged


# --- check 6: probabilities (common.PROBABILITY_TOLERANCE) ------------------------------------------------------


@pytest.mark.parametrize("factor, flagged", [(INSIDE, True), (OUTSIDE, False)])
def test_probability_rows_may_miss_one_by_the_tolerance(factor: float, flagged: bool) -> None:
    """common.PROBABILITY_TOLERANCE (check 6, 1e-3): non-negative rows summing to 1 + 0.5e-3 are probabilities
    (flagged), rows summing to 1 + 2e-3 are not."""
    rows = torch.full((16, 4), 0.25)
    rows[:, 3] += factor * PROBABILITY_TOLERANCE
    flag = check_probability_outputs(rows)
    assert (flag is not None) is flagged


# --- check 8: the surrogate's gates (masking.FORWARD_TOLERANCE, masking.GRADIENT_CHANGE) ------------------------


class RoundedWithOffset(nn.Module):
    """Linear logits below 1 of an input rounded to 1/8 (no input gradient: the surrogate has one to add) plus
    ``offset`` whenever autograd records: the surrogate's forward (run with gradients) then differs from the
    model's (run without) by exactly ``offset``."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset
        self.weight = nn.Parameter(torch.tensor([[0.2, -0.1, 0.05, 0.1], [-0.15, 0.1, 0.2, -0.05]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = ((x * 8).round() / 8).flatten(1) @ self.weight.T
        return z + self.offset if torch.is_grad_enabled() else z


@pytest.mark.parametrize("factor, used", [(INSIDE, True), (OUTSIDE, False)])
def test_surrogate_forward_gate_allows_half_its_tolerance(factor: float, used: bool) -> None:
    """masking.FORWARD_TOLERANCE (EVALUATION.md §5, 1e-5, ``<=``): a surrogate whose logits differ from the
    model's by 0.5e-5 is used, by 2e-5 refused, with the reason in the record."""
    masking = inspect_masking(RoundedWithOffset(factor * FORWARD_TOLERANCE), torch.rand(8, 1, 2, 2),
                              torch.zeros(8, dtype=torch.long))
    assert masking.report["gates"]["forward_change"] == pytest.approx(factor * FORWARD_TOLERANCE, rel=0.05)
    assert (masking.surrogate is not None) is used
    assert masking.refused is not used
    if not used:
        assert "logits differ" in masking.report["reason"]


class DetachedTerm(nn.Module):
    """``z_0 = x_0 + c * x_1.detach()``, ``z_1 = 0``: the model's margin gradient is ``-e_0``, the surrogate's
    (``detach`` replaced by the identity) ``-(e_0 + c e_1)``, a relative change of ``c / sqrt(1 + c^2)``."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1)
        z0 = f[:, 0] + self.c * f.detach()[:, 1]
        return torch.stack([z0, torch.zeros_like(z0)], 1)


@pytest.mark.parametrize("factor, used", [(INSIDE, False), (OUTSIDE, True)])
def test_surrogate_gradient_gate_needs_a_change_above_a_tenth_of_a_percent(factor: float, used: bool) -> None:
    """masking.GRADIENT_CHANGE (EVALUATION.md §5, 0.1%, ``>``): a replaced call that changes every sample's
    input gradient by 0.05% adds nothing (not used, the record says the gradients are equal); by 0.2% it is used."""
    masking = inspect_masking(DetachedTerm(factor * GRADIENT_CHANGE), torch.rand(8, 1, 1, 2),
                              torch.zeros(8, dtype=torch.long))
    assert masking.masked == 0 and not masking.refused
    assert (masking.surrogate is not None) is used
    assert masking.report["gates"]["repaired"] == (8 if used else 0)


# --- check 9: the indicators on the suite's paths (checks/common.py, Pintor et al. 2022) -----------------------------


class Steady(nn.Module):
    """Class 0 by a margin of 1 everywhere: a constant loss, never misclassified."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.ones(x.shape[0]), torch.zeros(x.shape[0])], 1)


class Planted(nn.Module):
    """Returns the planted ``logits`` whatever it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = torch.zeros(0, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def _grid(n: int) -> torch.Tensor:
    """``n`` distinct 1x2x2 images at least 0.1 apart (L∞, far beyond 2ε), the first pixel 0.2 in all."""
    k = torch.arange(n)
    digits = torch.stack([k % 6, k // 6 % 6, k // 36 % 6], 1)
    return torch.cat([torch.full((n, 1), 0.2), 0.2 + 0.1 * digits], 1).view(n, 1, 2, 2)


def _grid_trace(n: int) -> SuiteTrace:
    """A trace of ``n`` grid images of class 0 (:func:`_grid`) at ε = 8/255."""
    return SuiteTrace(_grid(n), torch.zeros(n, dtype=torch.long), torch.arange(n), eps=EPS, norm="linf")


def _record(n: int, adaptive: list[int] | None = None) -> dict:
    """A record of ``n`` clean-correct samples that every entry left robust, or with an ``adaptive`` entry whose
    member 0 is ``transfer`` and whose verdicts are given."""
    broken_by = {"a": [ROBUST] * n} if adaptive is None else {"adaptive": adaptive}
    attacks = {} if adaptive is None else {"adaptive": {"robust_acc_after": {"transfer": 0.0}}}
    return {"attacks": attacks, "per_sample": {"clean": [1] * n, "broken_by": broken_by}}


def _indicators(model: nn.Module, trace: SuiteTrace, record: dict) -> tuple[set[str], dict]:
    flags, values = run_indicators(model, trace, record, torch.Generator().manual_seed(0))
    return _codes(flags), values


def _paths(margins: torch.Tensor) -> SuiteTrace:
    """A trace whose probe samples (one per column) were evaluated at their clean image with these margins, one
    forward per row, through the hook the evaluation uses."""
    n = margins.shape[1]
    trace, planted = _grid_trace(n), Planted()
    with trace.watching(planted):
        for row in margins:
            planted.logits = torch.stack([torch.zeros(n), row], 1)
            planted(trace.x)
    return trace


def _rising(n: int, frac: float, at: int) -> torch.Tensor:
    """30 margins per sample: -2, then -1 - frac until ``at`` evaluations before the end, then -1 (the path's range
    is 1: the running best moves by ``frac`` of it there)."""
    path = torch.full((30,), -1.0)
    path[0], path[1:30 - at] = -2.0, -1.0 - frac
    return path[:, None].expand(30, n)


@pytest.mark.parametrize("factor, flagged", [(INSIDE, False), (OUTSIDE, True)])
def test_incomplete_optimization_needs_the_best_to_move_by_more_than_five_percent(factor: float, flagged: bool) -> None:
    """common.INCOMPLETE_TOLERANCE (check 9b, 0.05 of the range, ``>``): a running best that moves by 2.5% of the
    path's range in the last 10 evaluations has converged, one that moves by 10% has not."""
    codes, _ = _indicators(Steady(), _paths(_rising(1, factor * INCOMPLETE_TOLERANCE, 5)), _record(1))
    assert ("incomplete_optimization" in codes) is flagged


@pytest.mark.parametrize("at, flagged", [(INCOMPLETE_WINDOW // 2, True), (2 * INCOMPLETE_WINDOW, False)])
def test_incomplete_optimization_looks_at_the_last_ten_evaluations(at: int, flagged: bool) -> None:
    """common.INCOMPLETE_WINDOW (check 9b, 10): a rise of 20% of the range 5 evaluations before the end is in the
    window, one 20 evaluations before it is not."""
    codes, _ = _indicators(Steady(), _paths(_rising(1, 0.2, at)), _record(1))
    assert ("incomplete_optimization" in codes) is flagged


@pytest.mark.parametrize("factor, flagged", [(INSIDE, False), (OUTSIDE, True)])
def test_incomplete_optimization_flags_more_than_five_percent_of_the_probe(factor: float, flagged: bool) -> None:
    """common.INCOMPLETE_THRESHOLD (check 9b, 0.05, ``>``): 5 of 200 probe samples unconverged is quiet, 20 flag."""
    k = round(factor * INCOMPLETE_SHARE * 200)
    margins = _rising(200, 0.2, 2 * INCOMPLETE_WINDOW).clone()
    margins[:, :k] = _rising(k, 0.2, INCOMPLETE_WINDOW // 2)
    codes, values = _indicators(Steady(), _paths(margins), _record(200))
    assert values["incomplete_optimization"] == k / 200 and ("incomplete_optimization" in codes) is flagged


class Cliff(nn.Module):
    """Class 1 where the first pixel exceeds 0.2 + 3ε/4 (reached from 0.2 within the ball, not by the indicators'
    noise of half-width 4/255 = ε/2), class 0 elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = (x.flatten(1)[:, 0] > 0.2 + 0.75 * EPS).float()
        return torch.stack([1 - up, up], 1)


@pytest.mark.parametrize("silent, flagged", [(0, False), (1, True)])
def test_silent_success_flags_a_single_sample_of_128(silent: int, flagged: bool) -> None:
    """common.SILENT_SUCCESS_THRESHOLD (check 9a, 0: "any sample", Pintor et al.'s): an attack that evaluated a
    misclassified point in the ball of one of 128 samples the record counts robust is flagged."""
    model, trace = Cliff(), _grid_trace(128)
    x = trace.x
    with trace.watching(model):
        model(x)
        model(x[:silent] + torch.tensor([EPS, 0, 0, 0]).view(1, 1, 2, 2))
    codes, values = _indicators(model, trace, _record(128))
    assert values["silent_success"] == silent / 128 and ("silent_success" in codes) is flagged


class Jumpy(nn.Module):
    """Class 0 with the cross-entropy ln 2 within ``reach`` (L∞) of an ``anchor``, ``(1 + change)`` ln 2 beyond."""

    def __init__(self, anchor: torch.Tensor, change: float, reach: float = 0.0) -> None:
        super().__init__()
        self.anchor, self.reach = anchor.flatten(1), reach
        self.far = -math.log(2 ** (1 + change) - 1)  # the logit of class 0 (class 1 at 0) giving that loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distance = (x.flatten(1)[:, None] - self.anchor[None]).abs().amax(2).amin(1)
        z0 = torch.where(distance > self.reach, torch.full_like(distance, self.far), torch.zeros_like(distance))
        return torch.stack([z0, torch.zeros_like(z0)], 1)


def _unstable(change: float, reach: float = 0.0) -> tuple[set[str], dict, int]:
    """The indicators on 8 robust 1x4x4 probe samples of a Jumpy model anchored at them (the suite evaluated only
    the clean images, so they are the best points), and the forwards they cost."""
    x = 0.2 + 0.6 * torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    model = Jumpy(x, change, reach)
    trace = SuiteTrace(x, torch.zeros(8, dtype=torch.long), torch.arange(8), eps=EPS, norm="linf")
    with trace.watching(model):
        model(x)
    with count_passes(model) as passes:
        codes, values = _indicators(model, trace, _record(8))
    return codes, values, passes.forward


@pytest.mark.parametrize("factor, flagged", [(INSIDE, False), (OUTSIDE, True)])
def test_unstable_predictions_flag_a_mean_relative_change_above_0_3(factor: float, flagged: bool) -> None:
    """common.UNSTABLE_THRESHOLD (check 9c, 0.3, ``>``): a loss that changes by 15% under any noise is stable
    enough, by 60% it is flagged; each of the 8 samples costs 16 noise draws and the reference forward
    (common.UNSTABLE_DRAWS)."""
    codes, values, forwards = _unstable(factor * UNSTABLE_THRESHOLD)
    assert values["unstable_predictions"] == pytest.approx(factor * UNSTABLE_THRESHOLD, rel=1e-4)
    assert ("unstable_predictions" in codes) is flagged and forwards == 8 * (UNSTABLE_DRAWS + 1)


@pytest.mark.parametrize("factor, flagged", [(INSIDE, True), (OUTSIDE, False)])
def test_unstable_predictions_draw_noise_of_width_8_over_255(factor: float, flagged: bool) -> None:
    """common.UNSTABLE_WIDTH (check 9c, 8/255: each pixel moves by up to 4/255): a loss that doubles beyond 2/255
    of the point is reached by the noise, one that doubles beyond 8/255 is not."""
    codes, _, _ = _unstable(1.0, reach=factor * UNSTABLE_WIDTH / 2)
    assert ("unstable_predictions" in codes) is flagged


def _transfer(fooled: int, failed: int) -> set[str]:
    """The indicators when the transfer member's points fooled the source on ``fooled`` probe samples and left the
    model correct on ``failed`` of them."""
    trace, source = _grid_trace(fooled), Planted()
    source.logits = torch.tensor([[0.0, 1.0]]).expand(fooled, 2)
    with trace.watching(Steady(), source):
        source(trace.x)
    codes, values = _indicators(Steady(), trace, _record(fooled, [ROBUST] * failed + [0] * (fooled - failed)))
    assert values["transfer"] == {"fooled_source": fooled, "failed": failed, "failure": failed / fooled}
    return codes


@pytest.mark.parametrize("failed, flagged", [(19, False), (20, True)])
def test_transfer_failure_flags_more_than_95_percent_failed(failed: int, flagged: bool) -> None:
    """common.TRANSFER_FAILURE_THRESHOLD (check 9e, 0.95, ``>``): 19 of 20 points that fooled the source leaving the
    model correct (95%, on the threshold) is quiet, 20 of 20 flag."""
    assert ("transfer_failure" in _transfer(20, failed)) is flagged


@pytest.mark.parametrize("fooled, flagged", [(TRANSFER_MIN_SAMPLES - 1, False), (TRANSFER_MIN_SAMPLES, True)])
def test_transfer_failure_needs_ten_samples(fooled: int, flagged: bool) -> None:
    """common.TRANSFER_FAILURE_MIN_SAMPLES (check 9e, 10): all of 9 transfer points failing is too few to judge,
    all of 10 flag."""
    assert ("transfer_failure" in _transfer(fooled, fooled)) is flagged


# --- the progress line when the output is piped (progress.PIPE_INTERVAL_S) -----------------------------------------


def test_piped_progress_prints_after_thirty_seconds_not_before() -> None:
    """progress.PIPE_INTERVAL_S (EVALUATION.md §3, "at most every 30 seconds"): with the default interval a
    heartbeat 15 s after the start prints nothing, one 60 s after it prints a line."""
    now, stream = [0.0], io.StringIO()
    progress = Progress(10, stream=stream, clock=lambda: now[0])
    progress.begin("pgd-20", 0, 1)
    for at, lines in ((INSIDE * PROGRESS_INTERVAL_S, 0), (OUTSIDE * PROGRESS_INTERVAL_S, 1)):
        now[0] = at
        progress.heartbeat()
        assert len(stream.getvalue().splitlines()) == lines, at
