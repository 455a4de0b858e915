"""Checks that run attacks on a probe (EVALUATION.md checks 3-5): more steps or restarts, an ε sweep, Square
against the gradient attacks. Each returns ``(flags, values)`` or a flag."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from robustlab.attacks._common import check_norm, eval_mode
from robustlab.attacks.square import square
from robustlab.errors import UserError
from robustlab.evaluate.checks.common import (
    BLACK_BOX_MIN_SAMPLES,
    BLACK_BOX_THRESHOLD,
    DOC,
    PLATEAU,
    PROBE_RESTARTS,
    PROBE_STEPS,
    SQUARE_PROBE_THRESHOLD,
    TOLERANCE_SAMPLES,
    accurate_under_pgd,
    clean_correct,
    exceeds,
    fraction_true,
    pct,
    steps_run_names,
)
from robustlab.evaluate.flags import Flag


def check_steps_monotone(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, step_size: float,
    steps: tuple[int, int] = PROBE_STEPS, restarts: int = PROBE_RESTARTS, tolerance_samples: int = TOLERANCE_SAMPLES,
    generator: torch.Generator | None = None,
) -> tuple[list[Flag], dict[str, float]]:
    """Check 3 on a probe: PGD with more steps or more restarts must not leave more samples accurate.

    Three independent runs on the same samples: ``pgd-{steps[0]}``, ``pgd-{steps[1]}`` and
    ``pgd-{steps[0]}x{restarts}``, each drawing its own random starts from ``generator`` in turn.
    Decision [ours]: the runs are *not* merged per sample. With shared starts, the longer run would
    contain the shorter one's iterates and the check could never fire on a deterministic model; with
    independent starts it compares what an honest stronger attack achieves, so a model whose accuracy
    depends on luck rather than on optimisation (noisy or stateful defenses, useless gradients) shows up.
    The price is sampling noise, absorbed by ``tolerance_samples`` (default 1: one sample more is
    tolerated, two are flagged). Returns ``(flags, {run name: accuracy})``.
    """
    norm = check_norm(norm)
    if x.shape[0] == 0:
        return [], {}
    with eval_mode(model):
        verdicts = run_steps(
            model, x, y, clean_correct(model, x, y), eps=eps, norm=norm, step_size=step_size, steps=steps,
            restarts=restarts, generator=generator,
        )
    values = {name: fraction_true(v) for name, v in verdicts.items()}
    flags = steps_flags(values, steps=steps, restarts=restarts, n=x.shape[0], tolerance_samples=tolerance_samples)
    return flags, values


def run_steps(

    model: nn.Module, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, *, steps: tuple[int, int], restarts: int,
    **attack: Any,
) -> dict[str, torch.Tensor]:
    """Per-sample verdicts of PGD-few, PGD-many and PGD-few x restarts, run one after the other
    (``attack``: :func:`~robustlab.evaluate.checks.common.accurate_under_pgd`'s ``eps``, ``norm``, ``step_size``,
    ``generator``)."""
    few, many = steps
    runs = dict(zip(steps_run_names(steps, restarts), ((few, 1), (many, 1), (few, restarts))))
    return {name: accurate_under_pgd(model, x, y, correct, steps=k, restarts=r, **attack)
            for name, (k, r) in runs.items()}


def steps_flags(
    values: Mapping[str, float], *, steps: tuple[int, int], restarts: int, n: int, tolerance_samples: int
) -> list[Flag]:
    base, longer, restarted = steps_run_names(steps, restarts)
    tol = tolerance_samples / n
    flags: list[Flag] = []
    for more, what in ((longer, "more steps"), (restarted, "more restarts")):
        excess = values[more] - values[base]
        if exceeds(excess, tol):
            flags.append(Flag(
                "monotonicity",
                f"{more} left {round(excess * n)} more of {n} probe samples accurate than {base} "
                f"({pct(values[more])} vs {pct(values[base])}): {what} should never raise accuracy; the "
                f"model may be randomized or stateful, or its gradients uninformative ({DOC} 3)",
                excess,
            ))
    return flags


def eps_cap(x: torch.Tensor, norm: str) -> float:
    """The radius beyond which the ball covers the whole [0, 1] box: 1 (L∞) or sqrt(d) (L2)."""
    return 1.0 if norm == "linf" else math.sqrt(x[0].numel())


def _sweep_radii(eps: float, multipliers: Sequence[float], cap: float) -> list[tuple[float, float]]:
    """(multiplier, radius) pairs, radius clipped at ``cap``; a clipped duplicate is dropped."""
    out: list[tuple[float, float]] = []
    for m in sorted(multipliers):
        r = min(eps * m, cap)
        if not out or r > out[-1][1]:
            out.append((m, r))
    return out


def sweep_flags(
    accs: list[tuple[float, float, float]], *, plateau: float, n: int, tolerance_samples: int, steps: int
) -> list[Flag]:
    """Judge a sweep of (multiplier, radius, accuracy), radii increasing."""
    flags: list[Flag] = []
    if not accs:
        return flags
    m, r, a = accs[-1]
    if a > plateau:
        flags.append(Flag(
            "eps_plateau",
            f"PGD-{steps} still leaves {pct(a)} of probe samples accurate at eps {r:.4g} ({m:g}x the budget): "
            f"accuracy should fall toward 0 as eps grows; a plateau means the attack is not working, so "
            f"gradients may be masked ({DOC} 4)",
            a,
        ))
    tol = tolerance_samples / n if n else 0.0
    for (m1, r1, a1), (m2, r2, a2) in zip(accs, accs[1:]):
        if exceeds(a2 - a1, tol):
            flags.append(Flag(
                "eps_not_monotone",
                f"PGD-{steps} accuracy rose from {pct(a1)} at eps {r1:.4g} to {pct(a2)} at eps {r2:.4g}: a "
                f"larger budget should never help the model; gradients may be masked ({DOC} 4)",
                a2 - a1,
            ))
    return flags


def run_sweep(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, *, eps: float, norm: str,
    step_size: float | None, multipliers: Sequence[float], steps: int, generator: torch.Generator | None,
) -> tuple[list[tuple[float, float, float]], dict[float, torch.Tensor]]:
    """PGD at each radius; returns (multiplier, radius, accuracy) rows and the per-sample verdicts by multiplier."""
    base_step = eps / 4 if step_size is None else step_size
    rows: list[tuple[float, float, float]] = []
    verdicts: dict[float, torch.Tensor] = {}
    for m, r in _sweep_radii(eps, multipliers, eps_cap(x, norm)):
        robust = accurate_under_pgd(
            model, x, y, correct, eps=r, norm=norm, steps=steps, step_size=base_step * m, generator=generator
        )
        verdicts[m] = robust
        rows.append((m, r, fraction_true(robust)))
    return rows, verdicts


def check_eps_sweep(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, step_size: float | None = None,
    multipliers: Sequence[float] = (1, 2, 4, 8), steps: int = 20, plateau: float = PLATEAU,
    tolerance_samples: int = TOLERANCE_SAMPLES, generator: torch.Generator | None = None,
) -> tuple[list[Flag], dict[float, float]]:
    """Check 4: PGD-``steps`` accuracy at ``eps * m`` for each multiplier must fall toward 0.

    The radius is clipped where the ball covers the whole [0, 1] box (1 for L∞, sqrt(d) for L2);
    multipliers that clip to an already-tested radius are skipped. The step size grows with the
    radius: ``step_size * m`` (``step_size`` defaults to ``eps / 4``, e.g. 2/255 at 8/255).
    Flags: accuracy at the largest radius above ``plateau`` (default 0.1: at 8x the budget, e.g.
    64/255 on CIFAR-10, PGD brings any non-masked model to about 0%, so 10% is a wide margin); accuracy
    rising from one radius to the next by more than ``tolerance_samples`` samples (default 1).
    Returns ``(flags, {radius: accuracy})``.
    """
    norm = check_norm(norm)
    if x.shape[0] == 0:
        return [], {}
    with eval_mode(model):
        correct = clean_correct(model, x, y)
        rows, _ = run_sweep(
            model, x, y, correct, eps=eps, norm=norm, step_size=step_size, multipliers=multipliers, steps=steps,
            generator=generator,
        )
    flags = sweep_flags(rows, plateau=plateau, n=x.shape[0], tolerance_samples=tolerance_samples, steps=steps)
    return flags, {r: a for _, r, a in rows}


def check_black_box(
    verdicts_gradient: torch.Tensor | Sequence[int] | Sequence[bool],
    verdicts_square: torch.Tensor | Sequence[int] | Sequence[bool], *, threshold: float = BLACK_BOX_THRESHOLD,
    min_samples: int = BLACK_BOX_MIN_SAMPLES, gradient_name: str = "the gradient attacks",
) -> Flag | None:
    """Check 5: per-sample verdicts (True/1 = still accurate) under the gradient attacks (their
    worst case) and under Square, on the same samples. Flagged when Square broke more than
    ``threshold`` of all evaluated samples (default 0.01) that the gradient attacks left accurate,
    and at least ``min_samples`` of them (default 3, so that one or two samples on a small
    evaluation, which are noise, never flag): on a model with useful gradients, a full gradient
    suite misses almost nothing a black-box random search finds (AutoAttack's Square, run after
    APGD and FAB, typically adds well under 1%). A suite whose only gradient attacks are weak
    (FGSM, a short PGD) can leave more to Square without masking; the message names them.
    Flag value: that fraction."""
    g, s = _as_verdicts(verdicts_gradient, verdicts_square)
    return black_box_flag(fraction_true(g & ~s), g.numel(), threshold, min_samples, gradient_name)


def _as_verdicts(verdicts_gradient: Any, verdicts_square: Any) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.as_tensor(verdicts_gradient).bool().flatten()
    s = torch.as_tensor(verdicts_square).bool().flatten().to(g.device)
    if g.shape != s.shape:
        raise UserError(f"verdicts must have the same length, got {g.numel()} and {s.numel()}")
    return g, s


def black_box_flag(
    fraction: float, n: int | None, threshold: float, min_samples: int, gradient_name: str
) -> Flag | None:
    """Flag when ``fraction`` > ``threshold`` and (``n`` known) ``fraction * n`` >= ``min_samples``."""
    if not exceeds(fraction, threshold) or (n and round(fraction * n) < min_samples):
        return None
    return Flag(
        "black_box",
        f"Square broke {pct(fraction)} of samples that {gradient_name} missed: a gradient-free attack "
        f"beating the gradient attacks means gradients may be masked ({DOC} 5)",
        fraction,
    )


def square_on_survivors(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, survivors: torch.Tensor, *, eps: float, norm: str,
    queries: int, generator: torch.Generator | None,
) -> torch.Tensor:
    """Per sample: Square broke it (only survivors are attacked)."""
    broke = torch.zeros_like(survivors)
    todo = survivors.nonzero().squeeze(1)
    if todo.numel() == 0:
        return broke
    x_adv = square(model, x[todo], y[todo], eps=eps, norm=norm, queries=queries, generator=generator)
    with torch.no_grad():
        broke[todo] = model(x_adv).argmax(1) != y[todo]
    return broke


def probe_values(survivors: torch.Tensor, broke: torch.Tensor, queries: int, gradient: str) -> dict[str, Any]:
    return {
        "source": "probe",
        "gradient_attacks": gradient,
        "queries": queries,
        "gradient_accuracy": fraction_true(survivors),
        "square_broke": int(broke.sum()),
        "fraction": fraction_true(broke),
    }


def check_square_probe(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, queries: int = 1000,
    threshold: float = SQUARE_PROBE_THRESHOLD, min_samples: int = BLACK_BOX_MIN_SAMPLES,
    step_size: float | None = None, steps: int = 20, generator: torch.Generator | None = None,
) -> tuple[list[Flag], dict[str, Any]]:
    """Check 5, standalone and cheap: PGD-``steps`` (``step_size`` defaults to ``eps / 4``), then
    Square with ``queries`` queries on the samples PGD left accurate. Flagged when Square broke more
    than ``threshold`` of the probe and at least ``min_samples`` samples (defaults 0.02 and 3: a probe
    has ~64-128 samples, so one sample is ~1%; this asks for 3 of 128, and a 1,000-query Square is
    far weaker than PGD-20 on a model with useful gradients). L∞ and L2.
    Returns ``(flags, values)``.
    """
    norm = check_norm(norm)
    if x.shape[0] == 0:
        return [], {"source": "skipped", "reason": "empty probe"}
    with eval_mode(model):
        correct = clean_correct(model, x, y)
        survivors = accurate_under_pgd(
            model, x, y, correct, eps=eps, norm=norm, steps=steps,
            step_size=eps / 4 if step_size is None else step_size, generator=generator,
        )
        broke = square_on_survivors(model, x, y, survivors, eps=eps, norm=norm, queries=queries, generator=generator)
    values = probe_values(survivors, broke, queries, f"pgd-{steps}")
    flag = black_box_flag(values["fraction"], x.shape[0], threshold, min_samples, f"pgd-{steps}")
    return ([flag] if flag else []), values
