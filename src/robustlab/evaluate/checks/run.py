"""The cheap versions of checks 1-6 and the indicators of check 9 on a probe batch, as ``robustlab eval`` runs them
(:func:`run_checks`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch
from torch import nn

from robustlab.attacks._common import check_norm, eval_mode
from robustlab.evaluate.checks.attacks import (
    black_box_flag,
    probe_values,
    run_steps,
    run_sweep,
    square_on_survivors,
    steps_flags,
    sweep_flags,
)
from robustlab.evaluate.checks.common import (
    BLACK_BOX_MIN_SAMPLES,
    BLACK_BOX_THRESHOLD,
    GRADIENT_THRESHOLD,
    PLATEAU,
    PROBE_GRADIENT_ATTACKS,
    PROBE_RESTARTS,
    PROBE_STEPS,
    RANDOMNESS_TOLERANCE,
    SQUARE_PROBE_THRESHOLD,
    SQUARE_QUERIES,
    SWEEP_MULTIPLIERS,
    SWEEP_STEPS,
    TOLERANCE_SAMPLES,
    UNSTABLE_DRAWS,
    and_list,
    fraction_true,
)
from robustlab.evaluate.checks.indicators import run_indicators, unconstrained_flag, unconstrained_survivors
from robustlab.evaluate.checks.model import (
    check_probability_outputs,
    gradient_flag,
    logit_change,
    masked_gradient_fraction,
    randomness_flag,
)
from robustlab.evaluate.checks.suite import check_monotonicity, suite_black_box, suite_size, suite_verdicts
from robustlab.evaluate.flags import Flag

if TYPE_CHECKING:
    from robustlab.evaluate.checks.trace import SuiteTrace


def announce_checks(n_probe: int, square_queries: int = SQUARE_QUERIES, traced: bool = False) -> str:
    """The line printed before :func:`run_checks`: what runs on how many samples, and its cost in passes
    (``traced``: the indicators read the suite's paths, :class:`~robustlab.evaluate.checks.trace.SuiteTrace`)."""
    short, long = PROBE_STEPS
    gradient_steps = short + long + short * PROBE_RESTARTS + SWEEP_STEPS * len(SWEEP_MULTIPLIERS)
    paths = (f", {UNSTABLE_DRAWS + 2} forwards per probe sample the suite left accurate (silent success confirmed, "
             "unstable predictions), the attacks' paths read from the suite's own forwards") if traced else ""
    return (f"checks: gradient-masking checks on {n_probe} probe samples "
            f"(PGD-{short}, PGD-{long}, PGD-{short}x{PROBE_RESTARTS}, "
            f"PGD-{SWEEP_STEPS} at {len(SWEEP_MULTIPLIERS)} radii, Square {square_queries} queries): about "
            f"{gradient_steps} forward+backward passes and up to {square_queries} forward queries per sample; "
            f"indicators of attack failure: PGD-{SWEEP_STEPS} with no bound on the samples the largest radius left "
            f"(up to {SWEEP_STEPS} forward+backward passes per such sample){paths}; skip them with --no-checks")


def run_checks(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, step_size: float,
    suite_result: Mapping[str, Any] | None = None, generator: torch.Generator | None = None,
    square_queries: int = SQUARE_QUERIES, trace: SuiteTrace | None = None,
) -> tuple[list[Flag], dict[str, Any]]:
    """The cheap versions of checks 1-6 on a probe batch ``(x, y)`` (the caller picks 64-128 samples).

    Runs, in eval mode (the previous mode restored): randomness (2 forwards), probabilities (on
    those logits), zero gradients (1 backward), PGD-10 / PGD-50 / PGD-10x3 (check 3), a PGD-20 eps
    sweep at 1, 2, 4, 8 x ``eps`` with steps ``step_size * m`` (check 4), and Square with
    ``square_queries`` queries on the samples that all four PGD runs at ``eps`` left accurate (check
    5, L∞ and L2; their worst case is a stronger gradient baseline than one run, so PGD's own
    random-start noise is not mistaken for masking, and Square has fewer samples to attack).
    With ``suite_result`` (the runner's result or record: ``clean_acc``, ``attacks`` {name:
    {"robust_acc", optional "robust_acc_after" {member: accuracy}}}, optional ``per_sample`` in the
    runner's layout {"clean", "broken_by": {name: [-2/-1/k]}} or flat {name: [1 accurate / 0 broken]},
    optional ``n_examples``), check 3 also runs on the suite's numbers (tolerance at least one
    sample), and check 5 uses the suite's own Square: a ``square`` entry's verdicts against the
    gradient attacks' worst case, or the drop at Square inside an ``autoattack`` group; the Square
    probe is then skipped (it still runs when the suite's Square cannot be compared, e.g. a flat
    ``square`` accuracy with no per-sample verdicts). ``generator`` drives every random start and
    Square draw; None means a generator seeded with 0 on ``x``'s device, so the checks are
    reproducible. Each check uses its default thresholds (the module's constants).
    Then the indicators of attack failure (check 9, :mod:`~robustlab.evaluate.checks.indicators`): unconstrained
    failure from the sweep (PGD-20 with no bound on the samples its largest radius left, when that radius is not
    the whole box), and with ``trace`` (the suite's attacks watched on these probe samples, which ``suite_result``
    must be the record of) silent success, incomplete optimization, unstable predictions and transfer failure.

    Returns ``(flags, values)``: flags in check order, and JSON-able measurements for the record
    (``n_probe``, ``clean_acc``, ``logit_change``, ``masked_gradient_fraction``, ``probability_outputs``,
    ``steps_monotone`` {run: accuracy}, ``eps_sweep`` [{eps, multiplier, robust_acc}], ``black_box``,
    ``indicators``).
    """
    norm = check_norm(norm)
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    n = x.shape[0]
    flags: list[Flag] = []
    values: dict[str, Any] = {"n_probe": n}

    def add(found: Flag | None | Iterable[Flag]) -> None:
        if isinstance(found, Flag):
            flags.append(found)
        elif found is not None:
            flags.extend(found)

    with eval_mode(model):
        logits, change = logit_change(model, x)
        correct = (logits.argmax(1) == y) if n else torch.zeros(0, dtype=torch.bool, device=x.device)
        values["clean_acc"] = fraction_true(correct)
        values["logit_change"] = change
        add(randomness_flag(change, RANDOMNESS_TOLERANCE))
        fraction = masked_gradient_fraction(model, x, y)
        values["masked_gradient_fraction"] = fraction
        add(gradient_flag(fraction, GRADIENT_THRESHOLD))

        verdicts = suite_verdicts(suite_result) if suite_result else {}
        n_suite = suite_size(suite_result, verdicts) if suite_result else None
        if suite_result and "clean_acc" in suite_result:
            accs = {
                k: float(v["robust_acc"]) for k, v in (suite_result.get("attacks") or {}).items()
                if isinstance(v, Mapping) and isinstance(v.get("robust_acc"), (int, float))
            }
            add(check_monotonicity(float(suite_result["clean_acc"]), accs, n_samples=n_suite))
        gradient_robust = correct.clone()  # worst case over every PGD run at eps, for check 5
        if n:
            steps_verdicts = run_steps(
                model, x, y, correct, eps=eps, norm=norm, step_size=step_size, steps=PROBE_STEPS,
                restarts=PROBE_RESTARTS,
                generator=generator,
            )
            values["steps_monotone"] = {k: fraction_true(v) for k, v in steps_verdicts.items()}
            add(steps_flags(
                values["steps_monotone"], steps=PROBE_STEPS, restarts=PROBE_RESTARTS, n=n,
                tolerance_samples=TOLERANCE_SAMPLES,
            ))
            rows, sweep_verdicts = run_sweep(
                model, x, y, correct, eps=eps, norm=norm, step_size=step_size, multipliers=SWEEP_MULTIPLIERS,
                steps=SWEEP_STEPS, generator=generator,
            )
            values["eps_sweep"] = [{"eps": r, "multiplier": m, "robust_acc": a} for m, r, a in rows]
            add(sweep_flags(rows, plateau=PLATEAU, n=n, tolerance_samples=TOLERANCE_SAMPLES, steps=SWEEP_STEPS))
            for v in [*steps_verdicts.values(), sweep_verdicts[1]]:
                gradient_robust &= v

        bb_flag, bb_values = (
            suite_black_box(suite_result, verdicts, n_suite, BLACK_BOX_THRESHOLD) if suite_result else (None, None)
        )
        if bb_values is not None:
            add(bb_flag)
        elif not n:
            bb_values = {"source": "skipped", "reason": "empty probe"}
        else:
            gradient = and_list(PROBE_GRADIENT_ATTACKS)
            broke = square_on_survivors(
                model, x, y, gradient_robust, eps=eps, norm=norm, queries=square_queries, generator=generator
            )
            bb_values = probe_values(gradient_robust, broke, square_queries, gradient)
            add(black_box_flag(bb_values["fraction"], n, SQUARE_PROBE_THRESHOLD, BLACK_BOX_MIN_SAMPLES, gradient))
        values["black_box"] = bb_values

        probabilities = check_probability_outputs(logits)
        values["probability_outputs"] = probabilities is not None
        add(probabilities)

        unconstrained = None
        if n:  # after every check above, so that their random draws stay what they were
            unbounded, cap, ran = unconstrained_survivors(model, x, y, rows, sweep_verdicts, norm=norm,
                                                          generator=generator)
            unconstrained = {"eps": cap, "robust_acc": fraction_true(unbounded), "source": "probe" if ran else "sweep"}
            add(unconstrained_flag(unconstrained["robust_acc"], n, cap))
        found, values["indicators"] = run_indicators(model, trace, suite_result, generator)
        if unconstrained is not None:
            values["indicators"]["unconstrained"] = unconstrained
        add(found)
    return flags, values
