"""Indicators of attack failure (Pintor et al., NeurIPS 2022) on the probe, from the suite's own forwards.

Pintor et al.'s code (github.com/pralab/IndicatorsOfAttackFailure, ``src/indicators/indicators.py``) defines
six per-sample indicators for one attack. Here the attack is the whole suite, judged on the probe samples the
suite left accurate (a broken sample is no failure), and each indicator is a flag with its measured value:

* silent success (``silent_success_indicator``: an iterate of the path was adversarial, the returned point is
  not): a probe sample the record counts robust although a suite's attack evaluated a point of its threat model
  that the model misclassifies, confirmed by one more forward of that point (:func:`silent_successes`);
* incomplete optimization (``incomplete_optimization_indicator``): the sample's best margin along its path was
  still rising over the last evaluations (:func:`incomplete`);
* unstable predictions (``unstable_predictions_indicator``): the loss moves under small uniform noise around the
  suite's best point (:func:`instability`);
* transfer failure (``transfer_failure_indicator``): the transfer member's point fooled its source but not the
  model (:func:`transfer_failures`);
* unconstrained attack failure (``unconstrained_attack_failure_indicator``): PGD with no bound must break every
  point; check 4's ε sweep answers it where its largest radius covers the box or broke every sample, else its
  survivors are attacked once more at that radius (:func:`unconstrained_survivors`);
* unavailable gradients (``unavailable_gradients_indicator``: an interrupted graph or a zero gradient) is check 2
  (``zero_gradients``) and the probe of check 8, which robustlab already had: no new flag.

The paths come from :class:`~robustlab.evaluate.checks.trace.SuiteTrace`; thresholds are in
:mod:`~robustlab.evaluate.checks.common`, each with its source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from robustlab.attacks.losses import ce
from robustlab.evaluate.checks.attacks import eps_cap
from robustlab.evaluate.checks.common import (
    DOC,
    INCOMPLETE_THRESHOLD,
    INCOMPLETE_TOLERANCE,
    INCOMPLETE_WINDOW,
    SILENT_SUCCESS_THRESHOLD,
    SWEEP_STEPS,
    TRANSFER_FAILURE_MIN_SAMPLES,
    TRANSFER_FAILURE_THRESHOLD,
    UNCONSTRAINED_THRESHOLD,
    UNSTABLE_DRAWS,
    UNSTABLE_THRESHOLD,
    UNSTABLE_WIDTH,
    accurate_under_pgd,
    flag_above,
    fraction_true,
    pct,
)
from robustlab.evaluate.checks.suite import worst_case_robust
from robustlab.evaluate.flags import Flag
from robustlab.runs.record import ROBUST

if TYPE_CHECKING:
    from robustlab.evaluate.checks.trace import SuiteTrace

NOT_TRACED = "the suite's attacks were not traced (no suite, a resumed evaluation, or several processes)"


def silent_successes(model: nn.Module, trace: SuiteTrace, robust: torch.Tensor) -> torch.Tensor:
    """Per probe sample: counted robust, yet an attack evaluated a point of its threat model that the model
    misclassified, and a forward of that point now misclassifies it again (1 forward per such sample)."""
    found = robust & trace.adversarial
    todo = found.nonzero().squeeze(1)
    if todo.numel():
        with torch.no_grad():
            found[todo] = model(trace.adversarial_point[todo]).argmax(1) != trace.y[todo]
    return found


def incomplete(path: torch.Tensor, *, window: int = INCOMPLETE_WINDOW, tolerance: float = INCOMPLETE_TOLERANCE) -> bool:
    """Pintor et al.'s incomplete optimization (``incomplete_optimization_indicator``) on a path of margins to
    maximise: rescaled to [0, 1] by its range, the running best must move by more than ``tolerance`` (0.05) over
    the last ``window`` (10) evaluations. A path with fewer than two evaluations or no range never flags."""
    if path.numel() < 2:
        return False
    low, high = float(path.min()), float(path.max())
    if high == low:
        return False
    best = torch.cummax((path.double() - low) / (high - low), 0).values[-window:]
    return float(best[-1] - best[0]) > tolerance


def instability(
    model: nn.Module, points: torch.Tensor, y: torch.Tensor, *, draws: int = UNSTABLE_DRAWS,
    width: float = UNSTABLE_WIDTH, generator: torch.Generator | None = None,
) -> float:
    """Pintor et al.'s unstable predictions (``unstable_predictions_indicator``): the mean over ``draws`` draws
    and the samples of ``|L(p + d) - L(p)| / |L(p)|`` (``|L(p)|`` taken as 1 where it is 0), capped at 1, with
    ``L`` the cross-entropy and ``d`` uniform in [-width/2, width/2] per pixel (their ``radius`` 8/255).
    Deviations [ours]: ``p`` is the suite's best point of each sample (theirs: the input), ``p + d`` is clipped to
    [0, 1], and 16 draws (theirs: 100). Cost: ``draws`` + 1 forwards per sample."""
    if points.shape[0] == 0:
        return 0.0
    with torch.no_grad():
        reference = ce(model(points), y).double()
        scale = torch.where(reference == 0, torch.ones_like(reference), reference.abs())
        total = torch.zeros_like(reference)
        for _ in range(draws):
            noise = (torch.rand(points.shape, generator=generator, device=points.device, dtype=points.dtype) - 0.5)
            total += (ce(model((points + noise * width).clamp(0, 1)), y).double() - reference).abs() / scale
    return min(float(total.mean()) / draws, 1.0)


def transfer_failures(trace: SuiteTrace, suite_result: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(points that fooled the source but not the model, points that fooled the source)`` over the probe
    samples the ``transfer`` member of the ``adaptive`` entry ran on; None when it did not run."""
    after = ((suite_result.get("attacks") or {}).get("adaptive") or {}).get("robust_acc_after") or {}
    if "transfer" not in after:
        return None
    member = list(after).index("transfer")
    verdicts = torch.tensor([suite_result["per_sample"]["broken_by"]["adaptive"][i] for i in trace.index.tolist()],
                            device=trace.x.device)
    ran = (verdicts == ROBUST) | (verdicts == member)
    fooled = ran & trace.source_fooled
    return int((fooled & (verdicts == ROBUST)).sum()), int(fooled.sum())


def unconstrained_survivors(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, rows: list[tuple[float, float, float]],
    verdicts: Mapping[float, torch.Tensor], *, norm: str, generator: torch.Generator | None,
) -> tuple[torch.Tensor, float, bool]:
    """Per sample still accurate with no bound (radius :func:`eps_cap`, the whole [0, 1] box), the radius, and
    whether a run was added: check 4's sweep ``rows`` (multiplier, radius, accuracy) and per-sample ``verdicts``
    by multiplier answer it when their largest radius is the cap or left no sample accurate (a break inside a
    ball is a break without bound); otherwise PGD-20 attacks the samples it left, at the cap with step cap / 4
    (the default step rule, ε / 4, at that ε): up to 20 forward+backward passes per such sample."""
    cap = eps_cap(x, norm)
    multiplier, radius, _ = rows[-1]
    left = verdicts[multiplier]
    if radius >= cap or not bool(left.any()):
        return left, cap, False
    return accurate_under_pgd(model, x, y, left, eps=cap, norm=norm, steps=SWEEP_STEPS, step_size=cap / 4,
                              generator=generator), cap, True


def unconstrained_flag(failure: float, n: int, radius: float) -> Flag | None:
    """Pintor et al.'s unconstrained attack failure: any sample accurate with no bound (threshold 0, theirs)."""
    return flag_above(UNCONSTRAINED_THRESHOLD, "unconstrained_failure", (
        f"PGD-{SWEEP_STEPS} with no bound (eps {radius:.4g}, the whole input box) left {pct(failure)} of {n} probe "
        "samples accurate: without a budget every point can be changed into another class, so the attack, not the "
        f"model, failed; gradients are masked or the loss saturates ({DOC} 9d)"), failure)


def _flags(values: Mapping[str, Any]) -> list[Flag]:
    n, left = values["n_probe"], values["survivors"]
    found = [
        flag_above(SILENT_SUCCESS_THRESHOLD, "silent_success", (
            f"{pct(values['silent_success'])} of {n} probe samples are counted robust although an attack of the suite "
            "evaluated a point of their threat model that the model misclassifies (confirmed by another forward): the "
            "attack returned another point, so the robust accuracy is over-estimated; keep each sample's first "
            f"adversarial iterate ({DOC} 9a)"), values["silent_success"]),
        flag_above(INCOMPLETE_THRESHOLD, "incomplete_optimization", (
            f"on {pct(values['incomplete_optimization'])} of {n} probe samples the best margin the suite reached was "
            f"still rising over its last {INCOMPLETE_WINDOW} evaluations: the attacks stopped before converging; "
            f"give them more iterations ({DOC} 9b)"), values["incomplete_optimization"]),
        flag_above(UNSTABLE_THRESHOLD, "unstable_predictions", (
            f"the cross-entropy at the suite's best points of the {left} probe samples it left accurate changes by "
            f"{pct(values['unstable_predictions'])} on average under uniform noise of width {UNSTABLE_WIDTH:.4g}: the "
            f"loss is too rugged for gradient steps to follow; smooth it (EOT over noise) or attack a smoother "
            f"surrogate ({DOC} 9c)"), values["unstable_predictions"]),
    ]
    transfer = values.get("transfer")
    if transfer is not None and transfer["fooled_source"] >= TRANSFER_FAILURE_MIN_SAMPLES:
        found.append(flag_above(TRANSFER_FAILURE_THRESHOLD, "transfer_failure", (
            f"the transfer member's points fooled its source on {transfer['fooled_source']} probe samples but left "
            f"the model correct on {pct(transfer['failure'])} of them: the source is a poor stand-in for this model, "
            f"so transfer adds little to the worst case; use a source closer to it ({DOC} 9e)"), transfer["failure"]))
    return [f for f in found if f is not None]


def run_indicators(
    model: nn.Module, trace: SuiteTrace | None, suite_result: Mapping[str, Any] | None,
    generator: torch.Generator | None = None,
) -> tuple[list[Flag], dict[str, Any]]:
    """Indicators (a) silent success, (b) incomplete optimization, (c) unstable predictions and (e) transfer
    failure from ``trace`` and the record ``suite_result``; ``({}`` skipped with the reason) without a trace.
    Cost: 1 forward per probe sample with a silent-success candidate and :data:`UNSTABLE_DRAWS` + 1 forwards per
    probe sample the suite left accurate; the paths themselves cost nothing."""
    if trace is None or not suite_result or "per_sample" not in suite_result:
        return [], {"source": "skipped", "reason": NOT_TRACED}
    robust = worst_case_robust(suite_result["per_sample"])[trace.index.cpu()].to(trace.x.device)
    n = robust.numel()
    left = robust.nonzero().squeeze(1)
    paths = trace.paths()
    values: dict[str, Any] = {
        "source": "suite", "n_probe": n, "survivors": int(left.numel()),
        "silent_success": fraction_true(silent_successes(model, trace, robust)),
        "incomplete_optimization": sum(incomplete(paths[i]) for i in left.tolist()) / n if n else 0.0,
        "unstable_predictions": instability(model, trace.best_point[left], trace.y[left], generator=generator),
    }
    transfer = transfer_failures(trace, suite_result)
    if transfer is not None:
        failed, fooled = transfer
        values["transfer"] = {"fooled_source": fooled, "failed": failed, "failure": failed / fooled if fooled else 0.0}
    return _flags(values), values
