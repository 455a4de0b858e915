"""Attack names on the command line -> configured attack callables (a table, never mutated).

Names follow EVALUATION.md: ``fgsm``, ``pgd-K``, ``cw-K`` (K steps; ``pgd``/``cw`` alone mean 20),
``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab-t``, ``square``, and the groups ``autoattack``
(standard: apgd-ce → apgd-t → fab-t → square) and ``autoattack-fast`` (apgd-ce → apgd-t). Each entry
is a ``functools.partial`` of a pure attack function with every parameter bound, so the record can
list exactly what ran. A group's members run in order, each only on the samples still robust.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from robustlab.attacks.apgd import apgd, apgd_targeted
from robustlab.attacks.fab import fab_targeted
from robustlab.attacks.pgd import cw, fgsm, pgd
from robustlab.attacks.square import square
from robustlab.errors import UserError

AttackFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class AttackSpec:
    """One configured attack, or a group (``members``) run as a cascade on survivors."""

    name: str
    fn: AttackFn | None
    params: dict[str, Any]
    uses_generator: bool = True
    members: tuple["AttackSpec", ...] = field(default_factory=tuple)
    min_classes: int = 2

    def describe(self) -> dict[str, Any]:
        """JSON-able parameters (groups list their members')."""
        if self.members:
            return {m.name: m.params for m in self.members}
        return dict(self.params)


# name -> (function, fixed parameters, whether it takes step_size/restarts from the command line)
AUTOATTACK_PARTS: dict[str, tuple[AttackFn, dict[str, Any]]] = {
    "apgd-ce": (apgd, {"loss": "ce", "steps": 100, "restarts": 1}),
    "apgd-dlr": (apgd, {"loss": "dlr", "steps": 100, "restarts": 1}),
    "apgd-t": (apgd_targeted, {"steps": 100, "n_target_classes": 9, "restarts": 1}),
    "fab-t": (fab_targeted, {"steps": 100, "n_target_classes": 9, "restarts": 1}),
    "square": (square, {"queries": 5000, "p_init": 0.8, "restarts": 1}),
}
GROUPS: dict[str, tuple[str, ...]] = {
    "autoattack": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "autoattack-fast": ("apgd-ce", "apgd-t"),
}
ATTACK_FORMS = {
    "fgsm": "one step of size eps on sign of the CE gradient",
    "pgd-K": "K steps of step_size, uniform random start, CE loss, restarts on survivors",
    "cw-K": "PGD on the CW margin loss max_{k!=y} z_k - z_y, K steps",
    "apgd-ce": "Auto-PGD on CE, 100 iterations (Croce & Hein 2020)",
    "apgd-dlr": "Auto-PGD on the DLR loss, 100 iterations",
    "apgd-t": "targeted Auto-PGD on DLR-targeted, 9 target classes x 100 iterations",
    "fab-t": "targeted FAB, 9 target classes x 100 iterations (Croce & Hein 2020)",
    "square": "Square Attack, 5000 queries, p_init 0.8, margin loss (Andriushchenko et al. 2020)",
    "autoattack": "standard AutoAttack: apgd-ce -> apgd-t -> fab-t -> square on survivors",
    "autoattack-fast": "apgd-ce -> apgd-t on survivors",
}


def parse_attack_name(name: str) -> tuple[str, int | None]:
    """``"pgd-20"`` -> ``("pgd", 20)``; ``"apgd-ce"`` -> ``("apgd-ce", None)``; unknown names raise UserError."""
    key = name.strip().lower()
    if key == "fgsm" or key in AUTOATTACK_PARTS or key in GROUPS:
        return key, None
    match = re.fullmatch(r"(pgd|cw)(?:-(\d+))?", key)
    if match:
        steps = int(match.group(2)) if match.group(2) else 20
        if steps == 0:
            raise UserError(f"attack {name!r} runs no steps; use {match.group(1)}-K with K >= 1, e.g. {match.group(1)}-20")
        return match.group(1), steps
    raise UserError(
        f"unknown attack {name!r}; use fgsm, pgd-K, cw-K, apgd-ce, apgd-dlr, apgd-t, fab-t, square, "
        "autoattack or autoattack-fast; see robustlab list attacks"
    )


def build_attack(name: str, *, eps: float, norm: str, step_size: float, restarts: int = 1) -> AttackSpec:
    """The configured attack for one name."""
    family, steps = parse_attack_name(name)
    if norm == "l2" and (family == "square" or "square" in GROUPS.get(family, ())):
        raise UserError(f"{family} includes Square, which supports linf only here; for l2 use autoattack-fast or apgd-ce,apgd-t,fab-t")
    if family == "fgsm":
        params: dict[str, Any] = {"eps": eps, "norm": norm}
        return AttackSpec(family, functools.partial(fgsm, **params), params, uses_generator=False)
    if family in GROUPS:
        members = tuple(build_attack(m, eps=eps, norm=norm, step_size=step_size) for m in GROUPS[family])
        return AttackSpec(family, None, {"eps": eps, "norm": norm}, members=members)
    if family in AUTOATTACK_PARTS:
        fn, fixed = AUTOATTACK_PARTS[family]
        params = {"eps": eps, "norm": norm, **fixed}
        # the targeted DLR loss reads the 4th-largest logit
        return AttackSpec(family, functools.partial(fn, **params), params, min_classes=4 if family == "apgd-t" else 2)
    params = {"eps": eps, "norm": norm, "steps": steps, "step_size": step_size, "restarts": restarts}
    return AttackSpec(f"{family}-{steps}", functools.partial(pgd if family == "pgd" else cw, **params), params)


def _canonical(name: str) -> str:
    family, steps = parse_attack_name(name)
    return family if steps is None else f"{family}-{steps}"


def check_attack_names(names: list[str]) -> None:
    """Reject unknown or repeated attack names before any model or data is loaded."""
    seen: set[str] = set()
    for name in names:
        canonical = _canonical(name)
        if canonical in seen:
            raise UserError(f"attack {canonical} is listed twice; list each attack once")
        seen.add(canonical)


def build_suite(names: list[str], *, eps: float, norm: str, step_size: float, restarts: int = 1) -> list[AttackSpec]:
    """Attacks in the order given, duplicates rejected."""
    check_attack_names(names)
    return [build_attack(n, eps=eps, norm=norm, step_size=step_size, restarts=restarts) for n in names]
