"""Attack names on the command line -> configured attack callables (a table, never mutated).

Names follow EVALUATION.md: ``fgsm``, ``pgd-K``, ``cw-K`` (K steps; ``pgd``/``cw`` alone mean 20).
Each entry is a ``functools.partial`` of a pure attack function with every parameter bound, so the
record can list exactly what ran.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from robustlab.attacks.pgd import cw, fgsm, pgd
from robustlab.errors import UserError

AttackFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class AttackSpec:
    """One configured attack: its name, the bound callable ``fn(model, x, y, generator=...)`` and its parameters."""

    name: str
    fn: AttackFn
    params: dict[str, Any]
    uses_generator: bool = True


def parse_attack_name(name: str) -> tuple[str, int | None]:
    """``"pgd-20"`` -> ``("pgd", 20)``; ``"fgsm"`` -> ``("fgsm", None)``; unknown names raise UserError."""
    key = name.strip().lower()
    if key == "fgsm":
        return key, None
    match = re.fullmatch(r"(pgd|cw)(?:-(\d+))?", key)
    if match:
        return match.group(1), int(match.group(2)) if match.group(2) else 20
    raise UserError(f"unknown attack {name!r}; use fgsm, pgd-K, cw-K (e.g. pgd-20); see robustlab list attacks")


def build_attack(name: str, *, eps: float, norm: str, step_size: float, restarts: int = 1) -> AttackSpec:
    """The configured attack for one name."""
    family, steps = parse_attack_name(name)
    if family == "fgsm":
        params: dict[str, Any] = {"eps": eps, "norm": norm}
        return AttackSpec(family, functools.partial(fgsm, **params), params, uses_generator=False)
    params = {"eps": eps, "norm": norm, "steps": steps, "step_size": step_size, "restarts": restarts}
    fn = pgd if family == "pgd" else cw
    return AttackSpec(f"{family}-{steps}", functools.partial(fn, **params), params)


def check_attack_names(names: list[str]) -> None:
    """Reject unknown or repeated attack names before any model or data is loaded."""
    seen: set[str] = set()
    for name in names:
        family, steps = parse_attack_name(name)
        canonical = family if steps is None else f"{family}-{steps}"
        if canonical in seen:
            raise UserError(f"attack {canonical} is listed twice; list each attack once")
        seen.add(canonical)


def build_suite(names: list[str], *, eps: float, norm: str, step_size: float, restarts: int = 1) -> list[AttackSpec]:
    """Attacks in the order given, duplicates rejected."""
    check_attack_names(names)
    return [build_attack(n, eps=eps, norm=norm, step_size=step_size, restarts=restarts) for n in names]


ATTACK_FORMS = {
    "fgsm": "one step of size eps on sign of the CE gradient",
    "pgd-K": "K steps of step_size, uniform random start, CE loss, restarts on survivors",
    "cw-K": "PGD on the CW margin loss max_{k!=y} z_k - z_y, K steps",
}
