"""Attack names on the command line -> configured attack callables (a table, never mutated).

Names follow EVALUATION.md: ``fgsm``, ``pgd-K``, ``cw-K`` (K steps; ``pgd``/``cw`` alone mean 20),
``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab-t``, ``square``, and the groups ``autoattack``
(standard: apgd-ce → apgd-t → fab-t → square, for L∞ and L2), ``autoattack-rand`` (apgd-ce →
apgd-dlr, each gradient averaged over 20 passes: the reference's ``rand`` version for randomized
models), ``autoattack-fast`` (apgd-ce → apgd-t) and ``fast`` (fast-margin → fast-targeted → fast-square:
margin loss with A³'s cosine steps and diversified restarts on near-boundary survivors, MALT-ranked
targets, a reduced Square that escalates when gradients vanish; :mod:`robustlab.evaluate.fast`). The groups' members and settings are those of the
reference AutoAttack's ``version='standard'`` / ``'rand'`` (Croce & Hein 2020; ``pyautoattack`` 0.2.0).
Each entry is a ``functools.partial`` of a pure attack function with every parameter bound, so the
record can list exactly what ran. A group's members run in order, each only on the samples still robust.
:func:`autoattack_version` swaps ``autoattack`` for ``autoattack-rand`` when the model is randomized.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from robustlab.attacks.apgd import apgd, apgd_targeted
from robustlab.attacks.fab import fab_targeted
from robustlab.attacks.pgd import cw, fgsm, pgd
from robustlab.attacks.square import square
from robustlab.errors import UserError
from robustlab.evaluate.checks import check_randomness
from robustlab.evaluate.fast import FAST_FORMS, FAST_MEMBERS, FAST_PARTS
from robustlab.evaluate.flags import Flag

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
    **FAST_PARTS,
}
GROUPS: dict[str, tuple[str, ...]] = {
    "autoattack": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "autoattack-rand": ("apgd-ce", "apgd-dlr"),
    "autoattack-fast": ("apgd-ce", "apgd-t"),
    "fast": FAST_MEMBERS,
}
GROUP_SETTINGS: dict[str, dict[str, Any]] = {"autoattack-rand": {"eot": 20}}  # on top of each member's own
MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}  # the DLR losses read the 3rd / 4th largest logit
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
    "autoattack-rand": "AutoAttack for randomized models: apgd-ce -> apgd-dlr, gradients averaged over 20 passes (EOT)",
    "autoattack-fast": "apgd-ce -> apgd-t on survivors",
    **FAST_FORMS,
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
        "autoattack, autoattack-rand, autoattack-fast or fast; see robustlab list attacks"
    )


def build_attack(
    name: str, *, eps: float, norm: str, step_size: float, restarts: int = 1, settings: dict[str, Any] | None = None
) -> AttackSpec:
    """The configured attack for one name; ``settings`` override fixed parameters (a group's, e.g. EOT)."""
    family, steps = parse_attack_name(name)
    if family == "fgsm":
        params: dict[str, Any] = {"eps": eps, "norm": norm}
        return AttackSpec(family, functools.partial(fgsm, **params), params, uses_generator=False)
    if family in GROUPS:
        extra = GROUP_SETTINGS.get(family)
        members = tuple(build_attack(m, eps=eps, norm=norm, step_size=step_size, settings=extra) for m in GROUPS[family])
        return AttackSpec(family, None, {"eps": eps, "norm": norm}, members=members)
    if family in AUTOATTACK_PARTS:
        fn, fixed = AUTOATTACK_PARTS[family]
        params = {"eps": eps, "norm": norm, **fixed, **(settings or {})}
        return AttackSpec(family, functools.partial(fn, **params), params, min_classes=MIN_CLASSES.get(family, 2))
    params = {"eps": eps, "norm": norm, "steps": steps, "step_size": step_size, "restarts": restarts}
    return AttackSpec(f"{family}-{steps}", functools.partial(pgd if family == "pgd" else cw, **params), params)


def autoattack_version(model: nn.Module, probe: torch.Tensor, attacks: list[str]) -> tuple[list[str], Flag | None]:
    """``attacks`` with standard ``autoattack`` replaced by ``autoattack-rand`` if the model is randomized.

    Randomized means: two eval-mode forwards of ``probe`` differ (:func:`check_randomness`). The
    reference leaves this choice to the user and only warns; we make it, and the returned flag
    (``autoattack_rand``) says so in the record. Other names are kept.
    """
    keys = [a.strip().lower() for a in attacks]
    if "autoattack" not in keys or "autoattack-rand" in keys or check_randomness(model, probe) is None:
        return list(attacks), None
    chosen = ["autoattack-rand" if k == "autoattack" else a for k, a in zip(keys, attacks)]
    return chosen, Flag(
        "autoattack_rand",
        "the model is randomized (two forwards of the same input differ), so autoattack-rand (APGD-CE and "
        "APGD-DLR with 20-pass EOT, the reference's rand version) ran instead of standard autoattack",
    )


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
