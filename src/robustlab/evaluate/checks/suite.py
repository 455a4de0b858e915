"""Checks of a finished suite (EVALUATION.md checks 3 and 5 on the suite's own numbers and verdicts)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from robustlab.evaluate.checks.attacks import black_box_flag
from robustlab.evaluate.checks.common import (
    BLACK_BOX_MIN_SAMPLES,
    DOC,
    MONOTONICITY_TOLERANCE,
    and_list,
    exceeds,
    fraction_true,
    pct,
)
from robustlab.evaluate.flags import Flag
from robustlab.evaluate.names import attack_family, is_gradient, is_iterative_gradient
from robustlab.runs.record import ROBUST

_AA_MEMBERS = ("apgd-ce", "apgd-t")  # members of autoattack, autoattack+ and apgd-ce-t
# (weaker-or-equal, stronger) groups: a subset of members, or the same members in a stronger variant
_GROUP_ORDER = (("apgd-ce-t", "autoattack"), ("apgd-ce-t", "autoattack+"), ("autoattack", "autoattack+"),
                ("autoattack-rand", "autoattack-rand+"))


def check_monotonicity(
    clean_acc: float, attack_accs: Mapping[str, float], *, tolerance: float = MONOTONICITY_TOLERANCE,
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
        fam, steps = attack_family(k)
        if steps is not None:
            stepped.setdefault(fam, []).append((steps, k))
        if "fgsm" in acc and (is_iterative_gradient(k) or k.startswith("autoattack")):
            pairs.append(("fgsm", k))
    for runs in stepped.values():
        runs.sort()
        pairs += [(a, b) for (sa, a), (sb, b) in zip(runs, runs[1:]) if sb > sa]
    for group in ("autoattack", "autoattack+", "apgd-ce-t"):
        if group in acc:
            pairs += [(k, group) for k in acc if attack_family(k)[1] is not None or k in _AA_MEMBERS]
    pairs += [pair for pair in _GROUP_ORDER if pair[0] in acc and pair[1] in acc]
    flags: list[Flag] = []
    seen: set[tuple[str, str]] = set()
    numbers = {"clean": float(clean_acc), **acc}
    for hi, lo in pairs:
        if (hi, lo) in seen or hi == lo:
            continue
        seen.add((hi, lo))
        excess = numbers[lo] - numbers[hi]
        if exceeds(excess, tol):
            flags.append(Flag(
                "monotonicity",
                f"{lo} accuracy {pct(numbers[lo])} is above {hi} accuracy {pct(numbers[hi])}: a stronger "
                f"attack should never leave more samples accurate; gradients may be masked or an attack is "
                f"misconfigured ({DOC} 3)",
                excess,
            ))
    return flags


def suite_verdicts(suite_result: Mapping[str, Any]) -> dict[str, torch.Tensor]:
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
            out[name] = torch.as_tensor(v) == ROBUST
    for name, v in per_sample.items():
        if name not in ("clean", "broken_by") and name not in out and isinstance(v, (list, tuple, torch.Tensor)):
            out[name] = torch.as_tensor(v).bool()
    return out


def worst_case_robust(per_sample: Mapping[str, Any]) -> torch.Tensor:
    """Per sample (the runner's ``per_sample`` layout): clean-correct and left robust by every entry."""
    robust = torch.tensor(per_sample["clean"]) == 1
    for verdicts in per_sample["broken_by"].values():
        robust &= torch.tensor(verdicts) == ROBUST
    return robust


def suite_size(suite_result: Mapping[str, Any], verdicts: Mapping[str, torch.Tensor]) -> int | None:
    if isinstance(suite_result.get("n_examples"), int) and suite_result["n_examples"] > 0:
        return suite_result["n_examples"]
    clean = (suite_result.get("per_sample") or {}).get("clean")
    if isinstance(clean, (list, tuple)) and clean:
        return len(clean)
    return next((v.numel() for v in verdicts.values() if v.numel()), None)


def suite_black_box(
    suite_result: Mapping[str, Any], verdicts: Mapping[str, torch.Tensor], n: int | None, threshold: float
) -> tuple[Flag | None, dict[str, Any] | None]:
    """Check 5 from a suite: its ``square`` verdicts against the worst case of its gradient attacks
    (at least one iterative); else a group (``autoattack``) whose ``robust_acc_after`` {member:
    accuracy after it}, in cascade order, lists ``square`` (or ``fast-square`` in ``fast``) after gradient members: the
    drop at Square is exactly the fraction it broke among samples those members missed. ``(None, None)`` if neither."""
    gradient = [k for k in verdicts if is_gradient(k)]
    if "square" in verdicts and any(is_iterative_gradient(k) for k in gradient):
        g = torch.ones_like(verdicts["square"])
        for k in gradient:
            g &= verdicts[k].to(g.device)
        fraction = fraction_true(g & ~verdicts["square"].to(g.device))
        flag = black_box_flag(fraction, g.numel(), threshold, BLACK_BOX_MIN_SAMPLES, and_list(gradient))
        return flag, {"source": "suite", "gradient_attacks": gradient, "fraction": fraction}
    for name, entry in (suite_result.get("attacks") or {}).items():
        after = entry.get("robust_acc_after") if isinstance(entry, Mapping) else None
        black = (next((m for m in after if m == "square" or str(m).endswith("-square")), None)
                 if isinstance(after, Mapping) else None)
        if black is None:  # Square, or a group's own Square member (fast-square)
            continue
        members = list(after)
        i = members.index(black)
        if i == 0 or not all(is_iterative_gradient(m) for m in members[:i]):
            continue
        fraction = max(0.0, float(after[members[i - 1]]) - float(after[black]))
        if math.isnan(fraction):
            continue
        flag = black_box_flag(fraction, n, threshold, BLACK_BOX_MIN_SAMPLES, f"{and_list(members[:i])} (inside {name})")
        return flag, {"source": "suite", "gradient_attacks": members[:i], "group": name, "fraction": fraction}
    return None, None
