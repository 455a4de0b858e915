"""Automatic gradient-masking checks (docs/EVALUATION.md, "Automatic checks", checks 1-6).

Each check is a small function with its thresholds as keyword arguments. It returns flags, never
raises on a suspicious model, never logs or warns and keeps no module state; a flag is stored in the
record and printed under the table (STYLE.md §f). Three shapes:

* checks on a model or on numbers return ``Flag | None`` or ``list[Flag]``
  (:func:`check_randomness`, :func:`check_gradients`, :func:`check_probability_outputs`,
  :func:`check_monotonicity`, :func:`check_black_box`);
* checks that run attacks return ``(flags, values)``, the measured numbers for the record
  (:func:`check_steps_monotone`, :func:`check_eps_sweep`, :func:`check_square_probe`);
* :func:`run_checks` runs the cheap versions of all of them on a probe batch and returns
  ``(flags, values)``.

Every model-running check puts the model in eval mode for its duration and restores the previous
mode. A sample counts as accurate under an attack only if it is classified correctly both at the
clean input and at the attack's output (per-sample worst case, as in the evaluation runner).

Flag codes: ``randomness``, ``zero_gradients``, ``monotonicity``, ``eps_plateau``, ``eps_not_monotone``,
``black_box``, ``probabilities``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks._common import check_norm, eval_mode
from robustlab.attacks.pgd import pgd
from robustlab.attacks.square import square
from robustlab.errors import UserError
from robustlab.evaluate.flags import Flag

__all__ = [
    "check_black_box",
    "check_eps_sweep",
    "check_gradients",
    "check_monotonicity",
    "check_probability_outputs",
    "check_randomness",
    "check_square_probe",
    "check_steps_monotone",
    "run_checks",
]

_DOC = "docs/EVALUATION.md, check"

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
# The probe attacks of run_checks (announced with their cost by announce_checks).
PROBE_STEPS = (10, 50)
PROBE_RESTARTS = 3
SWEEP_MULTIPLIERS = (1, 2, 4, 8)
SWEEP_STEPS = 20
SQUARE_QUERIES = 1000


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _names(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _frac(mask: torch.Tensor) -> float:
    """Exact fraction of True entries (count / n, not a float32 mean); 0 for an empty mask."""
    return int(mask.sum()) / mask.numel() if mask.numel() else 0.0


# --- 1. Randomness ---------------------------------------------------------------------------------


def _logit_change(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Two eval-mode forwards of ``x``: the first logits and the largest change between the two,
    relative to ``max(1, max |logit|)`` (NaN at the same place in both counts as equal; NaN against a
    number counts as an infinite change)."""
    with eval_mode(model), torch.no_grad():
        a = model(x)
        b = model(x)
    if a.numel() == 0:
        return a, 0.0
    af, bf = a.float(), b.float()
    diff = (af - bf).abs()
    diff = torch.where(af.isnan() & bf.isnan(), torch.zeros_like(diff), diff)
    diff = torch.nan_to_num(diff, nan=math.inf)
    scale = max(1.0, float(torch.nan_to_num(af.abs(), nan=0.0, posinf=0.0).max()))
    return a, float(diff.max()) / scale


def _randomness_flag(change: float, tolerance: float) -> Flag | None:
    if change <= tolerance:
        return None
    return Flag(
        "randomness",
        f"two eval-mode forwards of the same batch gave different logits (largest change {change:.3g}, "
        f"relative to the logit scale): the model is randomized or stateful, so a single attack run "
        f"under-estimates its weakness; remove the randomness for evaluation or attack its expectation "
        f"({_DOC} 1)",
        change,
    )


def check_randomness(model: nn.Module, x: torch.Tensor, *, tolerance: float = RANDOMNESS_TOLERANCE) -> Flag | None:
    """Check 1: two eval-mode forwards of the same batch must give the same logits.

    ``tolerance`` (default 1e-5) bounds the largest absolute logit change divided by
    ``max(1, max |logit|)``: zero for a deterministic model on the CPU, and far above the rounding
    differences a GPU kernel could produce, far below any randomized defense. Flag value: that change.
    """
    _, change = _logit_change(model, x)
    return _randomness_flag(change, tolerance)


# --- 2. Zero or non-finite input gradients ---------------------------------------------------------


def _masked_gradient_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of samples whose input gradient of the cross-entropy is all zero or has a non-finite entry."""
    if x.shape[0] == 0:
        return 0.0
    x_req = x.detach().clone().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        logits = model(x_req)
        loss = F.cross_entropy(logits.float(), y, reduction="none").sum()
        if not loss.requires_grad:  # the output is cut off from the input (no_grad, detach, a constant)
            return 1.0
        (grad,) = torch.autograd.grad(loss, x_req, allow_unused=True)
    if grad is None:
        return 1.0
    flat = grad.flatten(1)
    bad = (flat == 0).all(dim=1) | ~torch.isfinite(flat).all(dim=1)
    return _frac(bad)


def _gradient_flag(fraction: float, threshold: float) -> Flag | None:
    if fraction <= threshold:
        return None
    return Flag(
        "zero_gradients",
        f"{_pct(fraction)} of samples have an all-zero or non-finite input gradient of the cross-entropy: "
        f"gradient attacks cannot move them and their robust accuracy is not trustworthy; look for "
        f"non-differentiable steps (rounding, thresholds, JPEG) or a saturated softmax, and use a "
        f"black-box or straight-through attack ({_DOC} 2)",
        fraction,
    )


def check_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, threshold: float = GRADIENT_THRESHOLD
) -> Flag | None:
    """Check 2: fraction of samples whose CE input gradient (eval mode, at the clean input) is all
    zero or has a NaN/inf entry. Flagged above ``threshold`` (default 0: any such sample, as
    EVALUATION.md asks; a working ReLU network has a non-zero gradient at every input unless its
    softmax saturates, which is itself a form of masking). Flag value: the fraction."""
    return _gradient_flag(_masked_gradient_fraction(model, x, y), threshold)


# --- 3. Monotonicity -------------------------------------------------------------------------------

_STEPPED = re.compile(r"^(pgd|cw)(?:-(\d+))?$")
_AA_MEMBERS = ("apgd-ce", "apgd-t")  # members of autoattack, autoattack+ and apgd-ce-t
# (weaker-or-equal, stronger) groups: a subset of members, or the same members in a stronger variant
_GROUP_ORDER = (("apgd-ce-t", "autoattack"), ("apgd-ce-t", "autoattack+"), ("autoattack", "autoattack+"),
                ("autoattack-rand", "autoattack-rand+"))


def _family(name: str) -> tuple[str, int | None]:
    """``pgd-20`` -> (pgd, 20); ``pgd`` / ``cw`` alone mean 20 steps (suite naming); others (name, None)."""
    key = name.strip().lower()
    m = _STEPPED.match(key)
    if m:
        return m.group(1), int(m.group(2)) if m.group(2) else 20
    return key, None


def _is_gradient(name: str) -> bool:
    """Attacks driven by input gradients (``autoattack`` proper contains Square, so it is not one)."""
    fam, _ = _family(name)
    return fam in ("fgsm", "pgd", "cw", "apgd-ce-t", "fast-margin", "fast-targeted") or fam.startswith(("apgd", "fab"))


def _is_iterative_gradient(name: str) -> bool:
    return _is_gradient(name) and _family(name)[0] != "fgsm"


def check_monotonicity(
    clean_acc: float,
    attack_accs: Mapping[str, float],
    *,
    tolerance: float = MONOTONICITY_TOLERANCE,
    n_samples: int | None = None,
) -> list[Flag]:
    """Check 3 on a suite's numbers: clean >= fgsm >= pgd >= autoattack, and more steps never raise accuracy.

    Pairs compared (``weaker`` must not be more accurate than ``stronger`` by more than the tolerance):
    clean vs every attack; fgsm vs every iterative gradient attack (pgd-K, cw-K, apgd-*, fab-*) and
    the autoattack groups; pgd-K vs pgd-K' and cw-K vs cw-K' for K < K'; every pgd-K, cw-K, apgd-ce,
    apgd-t vs ``autoattack``, ``autoattack+`` and ``apgd-ce-t``; apgd-ce-t vs both autoattack groups and
    autoattack vs autoattack+ (autoattack-rand vs autoattack-rand+), per ``_GROUP_ORDER``. Square is only
    compared with clean (a black-box attack may legitimately be weaker than FGSM).

    ``tolerance`` (default 0.005, half a point) absorbs the noise of random starts on a large test
    set; with ``n_samples`` the tolerance is at least one sample (``1 / n_samples``), so a small probe
    is not flagged for a single sample. Flag value: the excess accuracy.
    """
    tol = max(tolerance, 1.0 / n_samples) if n_samples else tolerance
    acc = {k: float(v) for k, v in attack_accs.items()}
    pairs: list[tuple[str, str]] = [("clean", k) for k in acc]  # (stronger-or-equal-accuracy, weaker)
    stepped: dict[str, list[tuple[int, str]]] = {}
    for k in acc:
        fam, steps = _family(k)
        if steps is not None:
            stepped.setdefault(fam, []).append((steps, k))
        if "fgsm" in acc and (_is_iterative_gradient(k) or k.startswith("autoattack")):
            pairs.append(("fgsm", k))
    for runs in stepped.values():
        runs.sort()
        pairs += [(a, b) for (sa, a), (sb, b) in zip(runs, runs[1:]) if sb > sa]
    for group in ("autoattack", "autoattack+", "apgd-ce-t"):
        if group in acc:
            pairs += [(k, group) for k in acc if _family(k)[1] is not None or k in _AA_MEMBERS]
    pairs += [pair for pair in _GROUP_ORDER if pair[0] in acc and pair[1] in acc]
    flags: list[Flag] = []
    seen: set[tuple[str, str]] = set()
    numbers = {"clean": float(clean_acc), **acc}
    for hi, lo in pairs:
        if (hi, lo) in seen or hi == lo:
            continue
        seen.add((hi, lo))
        excess = numbers[lo] - numbers[hi]
        if excess > tol:
            flags.append(Flag(
                "monotonicity",
                f"{lo} accuracy {_pct(numbers[lo])} is above {hi} accuracy {_pct(numbers[hi])}: a stronger "
                f"attack should never leave more samples accurate; gradients may be masked or an attack is "
                f"misconfigured ({_DOC} 3)",
                excess,
            ))
    return flags


def _accurate_under_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    step_size: float,
    restarts: int = 1,
    generator: torch.Generator | None,
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


def _clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def check_steps_monotone(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    step_size: float,
    steps: tuple[int, int] = (10, 50),
    restarts: int = 3,
    tolerance_samples: int = TOLERANCE_SAMPLES,
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
        verdicts = _run_steps(
            model, x, y, _clean_correct(model, x, y), eps=eps, norm=norm, step_size=step_size, steps=steps,
            restarts=restarts, generator=generator,
        )
    values = {name: _frac(v) for name, v in verdicts.items()}
    flags = _steps_flags(values, steps=steps, restarts=restarts, n=x.shape[0], tolerance_samples=tolerance_samples)
    return flags, values


def _run_steps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    *,
    eps: float,
    norm: str,
    step_size: float,
    steps: tuple[int, int],
    restarts: int,
    generator: torch.Generator | None,
) -> dict[str, torch.Tensor]:
    """Per-sample verdicts of PGD-few, PGD-many and PGD-few x restarts, run one after the other."""
    few, many = steps
    runs = {f"pgd-{few}": (few, 1), f"pgd-{many}": (many, 1), f"pgd-{few}x{restarts}": (few, restarts)}
    return {
        name: _accurate_under_pgd(
            model, x, y, correct, eps=eps, norm=norm, steps=k, step_size=step_size, restarts=r, generator=generator
        )
        for name, (k, r) in runs.items()
    }


def _steps_flags(
    values: Mapping[str, float], *, steps: tuple[int, int], restarts: int, n: int, tolerance_samples: int
) -> list[Flag]:
    few, many = steps
    tol = tolerance_samples / n
    flags: list[Flag] = []
    base = f"pgd-{few}"
    for more, what in ((f"pgd-{many}", "more steps"), (f"pgd-{few}x{restarts}", "more restarts")):
        excess = values[more] - values[base]
        if excess > tol + 1e-12:
            flags.append(Flag(
                "monotonicity",
                f"{more} left {round(excess * n)} more of {n} probe samples accurate than {base} "
                f"({_pct(values[more])} vs {_pct(values[base])}): {what} should never raise accuracy; the "
                f"model may be randomized or stateful, or its gradients uninformative ({_DOC} 3)",
                excess,
            ))
    return flags


# --- 4. eps sweep ----------------------------------------------------------------------------------


def _eps_cap(x: torch.Tensor, norm: str) -> float:
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


def _sweep_flags(
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
            f"PGD-{steps} still leaves {_pct(a)} of probe samples accurate at eps {r:.4g} ({m:g}x the budget): "
            f"accuracy should fall toward 0 as eps grows; a plateau means the attack is not working, so "
            f"gradients may be masked ({_DOC} 4)",
            a,
        ))
    tol = tolerance_samples / n if n else 0.0
    for (m1, r1, a1), (m2, r2, a2) in zip(accs, accs[1:]):
        if a2 > a1 + tol + 1e-12:
            flags.append(Flag(
                "eps_not_monotone",
                f"PGD-{steps} accuracy rose from {_pct(a1)} at eps {r1:.4g} to {_pct(a2)} at eps {r2:.4g}: a "
                f"larger budget should never help the model; gradients may be masked ({_DOC} 4)",
                a2 - a1,
            ))
    return flags


def _run_sweep(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    *,
    eps: float,
    norm: str,
    step_size: float | None,
    multipliers: Sequence[float],
    steps: int,
    generator: torch.Generator | None,
) -> tuple[list[tuple[float, float, float]], dict[float, torch.Tensor]]:
    """PGD at each radius; returns (multiplier, radius, accuracy) rows and the per-sample verdicts by multiplier."""
    base_step = eps / 4 if step_size is None else step_size
    rows: list[tuple[float, float, float]] = []
    verdicts: dict[float, torch.Tensor] = {}
    for m, r in _sweep_radii(eps, multipliers, _eps_cap(x, norm)):
        robust = _accurate_under_pgd(
            model, x, y, correct, eps=r, norm=norm, steps=steps, step_size=base_step * m, generator=generator
        )
        verdicts[m] = robust
        rows.append((m, r, _frac(robust)))
    return rows, verdicts


def check_eps_sweep(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    step_size: float | None = None,
    multipliers: Sequence[float] = (1, 2, 4, 8),
    steps: int = 20,
    plateau: float = PLATEAU,
    tolerance_samples: int = TOLERANCE_SAMPLES,
    generator: torch.Generator | None = None,
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
        correct = _clean_correct(model, x, y)
        rows, _ = _run_sweep(
            model, x, y, correct, eps=eps, norm=norm, step_size=step_size, multipliers=multipliers, steps=steps,
            generator=generator,
        )
    flags = _sweep_flags(rows, plateau=plateau, n=x.shape[0], tolerance_samples=tolerance_samples, steps=steps)
    return flags, {r: a for _, r, a in rows}


# --- 5. Black box vs white box ---------------------------------------------------------------------


def check_black_box(
    verdicts_gradient: torch.Tensor | Sequence[int] | Sequence[bool],
    verdicts_square: torch.Tensor | Sequence[int] | Sequence[bool],
    *,
    threshold: float = BLACK_BOX_THRESHOLD,
    min_samples: int = BLACK_BOX_MIN_SAMPLES,
    gradient_name: str = "the gradient attacks",
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
    return _black_box_flag(_frac(g & ~s), g.numel(), threshold, min_samples, gradient_name)


def _as_verdicts(verdicts_gradient: Any, verdicts_square: Any) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.as_tensor(verdicts_gradient).bool().flatten()
    s = torch.as_tensor(verdicts_square).bool().flatten().to(g.device)
    if g.shape != s.shape:
        raise UserError(f"verdicts must have the same length, got {g.numel()} and {s.numel()}")
    return g, s


def _black_box_flag(
    fraction: float, n: int | None, threshold: float, min_samples: int, gradient_name: str
) -> Flag | None:
    """Flag when ``fraction`` > ``threshold`` and (``n`` known) ``fraction * n`` >= ``min_samples``."""
    if fraction <= threshold or (n and round(fraction * n) < min_samples):
        return None
    return Flag(
        "black_box",
        f"Square broke {_pct(fraction)} of samples that {gradient_name} missed: a gradient-free attack "
        f"beating the gradient attacks means gradients may be masked ({_DOC} 5)",
        fraction,
    )


def _square_on_survivors(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    survivors: torch.Tensor,
    *,
    eps: float,
    norm: str,
    queries: int,
    generator: torch.Generator | None,
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


def _probe_values(survivors: torch.Tensor, broke: torch.Tensor, queries: int, gradient: str) -> dict[str, Any]:
    return {
        "source": "probe",
        "gradient_attacks": gradient,
        "queries": queries,
        "gradient_accuracy": _frac(survivors),
        "square_broke": int(broke.sum()),
        "fraction": _frac(broke),
    }


def check_square_probe(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    queries: int = 1000,
    threshold: float = SQUARE_PROBE_THRESHOLD,
    min_samples: int = BLACK_BOX_MIN_SAMPLES,
    step_size: float | None = None,
    steps: int = 20,
    generator: torch.Generator | None = None,
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
        correct = _clean_correct(model, x, y)
        survivors = _accurate_under_pgd(
            model, x, y, correct, eps=eps, norm=norm, steps=steps,
            step_size=eps / 4 if step_size is None else step_size, generator=generator,
        )
        broke = _square_on_survivors(model, x, y, survivors, eps=eps, norm=norm, queries=queries, generator=generator)
    values = _probe_values(survivors, broke, queries, f"pgd-{steps}")
    flag = _black_box_flag(values["fraction"], x.shape[0], threshold, min_samples, f"pgd-{steps}")
    return ([flag] if flag else []), values


# --- 6. Probability outputs ------------------------------------------------------------------------


def check_probability_outputs(logits: torch.Tensor, *, tolerance: float = PROBABILITY_TOLERANCE) -> Flag | None:
    """Check 6: every row non-negative and summing to 1 within ``tolerance`` (default 1e-3, loose
    enough for half-precision softmax; real logits never satisfy this on a whole batch). Attacks take
    a log-softmax of what the model returns, so probabilities squash the loss and mislead CE/DLR
    attacks. Log-probabilities are not flagged: they differ from logits by a per-row constant, which
    the losses ignore. Flag value: the largest deviation of a row sum from 1."""
    if logits.ndim != 2 or logits.shape[0] == 0:
        return None
    z = logits.detach().float()
    if not bool(torch.isfinite(z).all()) or bool((z < 0).any()):
        return None
    deviation = float((z.sum(dim=1) - 1).abs().max())
    if deviation > tolerance:
        return None
    return Flag(
        "probabilities",
        "the model returns probabilities, not logits (every output row is non-negative and sums to 1): "
        f"attacks on CE/DLR losses are misled; return logits ({_DOC} 6)",
        deviation,
    )


# --- All together ----------------------------------------------------------------------------------


def _suite_verdicts(suite_result: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Per attack, per sample: still accurate (bool). Two layouts of ``per_sample`` are read: the
    runner's ``{"clean": [1/0], "broken_by": {name: [-2 not run or clean-wrong, -1 robust, k member]}}``
    and a flat ``{name: [1 accurate / 0 broken]}`` (``clean`` is skipped)."""
    per_sample = suite_result.get("per_sample")
    if not isinstance(per_sample, Mapping):
        return {}
    out: dict[str, torch.Tensor] = {}
    broken_by = per_sample.get("broken_by")
    if isinstance(broken_by, Mapping):
        for name, v in broken_by.items():
            out[name] = torch.as_tensor(v) == -1
    for name, v in per_sample.items():
        if name not in ("clean", "broken_by") and name not in out and isinstance(v, (list, tuple, torch.Tensor)):
            out[name] = torch.as_tensor(v).bool()
    return out


def _suite_n(suite_result: Mapping[str, Any], verdicts: Mapping[str, torch.Tensor]) -> int | None:
    if isinstance(suite_result.get("n_examples"), int) and suite_result["n_examples"] > 0:
        return suite_result["n_examples"]
    clean = (suite_result.get("per_sample") or {}).get("clean")
    if isinstance(clean, (list, tuple)) and clean:
        return len(clean)
    return next((v.numel() for v in verdicts.values() if v.numel()), None)


def _suite_black_box(
    suite_result: Mapping[str, Any], verdicts: Mapping[str, torch.Tensor], n: int | None, threshold: float
) -> tuple[Flag | None, dict[str, Any] | None]:
    """Check 5 from a suite: its ``square`` verdicts against the worst case of its gradient attacks
    (at least one iterative); else a group (``autoattack``) whose ``robust_acc_after`` {member:
    accuracy after it}, in cascade order, lists ``square`` (or ``fast-square`` in ``fast``) after gradient members: the drop at Square
    is exactly the fraction it broke among samples those members missed. ``(None, None)`` if neither."""
    gradient = [k for k in verdicts if _is_gradient(k)]
    if "square" in verdicts and any(_is_iterative_gradient(k) for k in gradient):
        g = torch.ones_like(verdicts["square"])
        for k in gradient:
            g &= verdicts[k].to(g.device)
        fraction = _frac(g & ~verdicts["square"].to(g.device))
        flag = _black_box_flag(fraction, g.numel(), threshold, BLACK_BOX_MIN_SAMPLES, _names(gradient))
        return flag, {"source": "suite", "gradient_attacks": gradient, "fraction": fraction}
    for name, entry in (suite_result.get("attacks") or {}).items():
        after = entry.get("robust_acc_after") if isinstance(entry, Mapping) else None
        black = next((m for m in after if m == "square" or str(m).endswith("-square")), None) if isinstance(after, Mapping) else None
        if black is None:  # Square, or a group's own Square member (fast-square)
            continue
        members = list(after)
        i = members.index(black)
        if i == 0 or not all(_is_iterative_gradient(m) for m in members[:i]):
            continue
        fraction = max(0.0, float(after[members[i - 1]]) - float(after[black]))
        if math.isnan(fraction):
            continue
        flag = _black_box_flag(fraction, n, threshold, BLACK_BOX_MIN_SAMPLES, f"{_names(members[:i])} (inside {name})")
        return flag, {"source": "suite", "gradient_attacks": members[:i], "group": name, "fraction": fraction}
    return None, None


def announce_checks(n_probe: int, square_queries: int = SQUARE_QUERIES) -> str:
    """The line printed before :func:`run_checks`: what runs on how many samples, and its cost in passes."""
    short, long = PROBE_STEPS
    gradient_steps = short + long + short * PROBE_RESTARTS + SWEEP_STEPS * len(SWEEP_MULTIPLIERS)
    return (f"checks: gradient-masking checks on {n_probe} probe samples (PGD-{short}, PGD-{long}, PGD-{short}x{PROBE_RESTARTS}, "
            f"PGD-{SWEEP_STEPS} at {len(SWEEP_MULTIPLIERS)} radii, Square {square_queries} queries): about "
            f"{gradient_steps} forward+backward passes and up to {square_queries} forward queries per sample; "
            "skip them with --no-checks")


def run_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    step_size: float,
    suite_result: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    square_queries: int = SQUARE_QUERIES,
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

    Returns ``(flags, values)``: flags in check order, and JSON-able measurements for the record
    (``n_probe``, ``clean_acc``, ``logit_change``, ``masked_gradient_fraction``, ``probability_outputs``,
    ``steps_monotone`` {run: accuracy}, ``eps_sweep`` [{eps, multiplier, robust_acc}], ``black_box``).
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
        logits, change = _logit_change(model, x)
        correct = (logits.argmax(1) == y) if n else torch.zeros(0, dtype=torch.bool, device=x.device)
        values["clean_acc"] = _frac(correct)
        values["logit_change"] = change
        add(_randomness_flag(change, RANDOMNESS_TOLERANCE))
        fraction = _masked_gradient_fraction(model, x, y)
        values["masked_gradient_fraction"] = fraction
        add(_gradient_flag(fraction, GRADIENT_THRESHOLD))

        verdicts = _suite_verdicts(suite_result) if suite_result else {}
        suite_n = _suite_n(suite_result, verdicts) if suite_result else None
        if suite_result and "clean_acc" in suite_result:
            accs = {
                k: float(v["robust_acc"]) for k, v in (suite_result.get("attacks") or {}).items()
                if isinstance(v, Mapping) and isinstance(v.get("robust_acc"), (int, float))
            }
            add(check_monotonicity(float(suite_result["clean_acc"]), accs, n_samples=suite_n))
        gradient_robust = correct.clone()  # worst case over every PGD run at eps, for check 5
        if n:
            steps_verdicts = _run_steps(
                model, x, y, correct, eps=eps, norm=norm, step_size=step_size, steps=PROBE_STEPS, restarts=PROBE_RESTARTS,
                generator=generator,
            )
            values["steps_monotone"] = {k: _frac(v) for k, v in steps_verdicts.items()}
            add(_steps_flags(
                values["steps_monotone"], steps=PROBE_STEPS, restarts=PROBE_RESTARTS, n=n, tolerance_samples=TOLERANCE_SAMPLES
            ))
            rows, sweep_verdicts = _run_sweep(
                model, x, y, correct, eps=eps, norm=norm, step_size=step_size, multipliers=SWEEP_MULTIPLIERS,
                steps=SWEEP_STEPS, generator=generator,
            )
            values["eps_sweep"] = [{"eps": r, "multiplier": m, "robust_acc": a} for m, r, a in rows]
            add(_sweep_flags(rows, plateau=PLATEAU, n=n, tolerance_samples=TOLERANCE_SAMPLES, steps=SWEEP_STEPS))
            for v in [*steps_verdicts.values(), sweep_verdicts[1]]:
                gradient_robust &= v

        bb_flag, bb_values = (
            _suite_black_box(suite_result, verdicts, suite_n, BLACK_BOX_THRESHOLD) if suite_result else (None, None)
        )
        if bb_values is not None:
            add(bb_flag)
        elif not n:
            bb_values = {"source": "skipped", "reason": "empty probe"}
        else:
            gradient = _names(["pgd-10", "pgd-50", "pgd-10x3", "pgd-20"])
            broke = _square_on_survivors(
                model, x, y, gradient_robust, eps=eps, norm=norm, queries=square_queries, generator=generator
            )
            bb_values = _probe_values(gradient_robust, broke, square_queries, gradient)
            add(_black_box_flag(bb_values["fraction"], n, SQUARE_PROBE_THRESHOLD, BLACK_BOX_MIN_SAMPLES, gradient))
        values["black_box"] = bb_values

        probabilities = check_probability_outputs(logits)
        values["probability_outputs"] = probabilities is not None
        add(probabilities)
    return flags, values
