"""Attack names on the command line -> configured attack callables (a table, never mutated).

Names follow EVALUATION.md: ``fgsm``, ``pgd-K``, ``cw-K`` (K steps; ``pgd``/``cw`` alone mean 20),
``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab-t``, ``square``, and the groups below. Each entry is a
``functools.partial`` of a pure attack function with every parameter bound (the settings that tell a
reference-faithful run from a stronger one, Square's ``mode``, FAB's ``final_search``, APGD's
``output`` and ``start``, always explicitly), so the record lists exactly what ran. A group's members run in
order, each only on the samples still robust.

Groups (names mean what they say, EVALUATION.md):

* ``autoattack``: the reference AutoAttack's ``version='standard'`` (Croce & Hein 2020; fra31/auto-attack,
  packaged as ``pyautoattack`` 0.2.0, ``AutoAttack._set_version``): apgd-ce -> apgd-t -> fab-t -> square,
  L∞ and L2, with the reference's algorithms: Square's reference draws (``mode="reference"``) and the
  reference's 5,000 candidates after the initial point (``queries=5001`` in our counting), FAB-T with
  no final search (the reference's ``FABAttack.attack_single_run`` returns its best iterate as is), APGD
  from the reference's start on the ε-ball's surface (``start="surface"``, ``autopgd_base.py``).
* ``autoattack-rand``: the reference's ``version='rand'``: apgd-ce -> apgd-dlr, each gradient averaged
  over 20 passes (``eot_iter=20``), and the reference's output rule under EOT (``output="reference"``:
  the last iterate one noisy forward misclassified, else the clean input).
* ``autoattack+`` / ``autoattack-rand+``: robustlab's stronger variants of the same members: per-sample
  Square draws (``mode="strong"``), FAB's 3-step final search, APGD from a uniform start in the ball
  (``start="ball"``), and under EOT every sample's best-loss point (``output="best"``). Each choice is
  meant never to weaken the attack (the start is only a different draw; on the digits models of
  tests/attacks/test_crosscheck*.py they give the reference's numbers or lower); their numbers are not
  comparable with published AutoAttack numbers. "What the worst case uses by default", our reading:
  ``eval`` runs exactly the attacks listed (no hidden cost), so the worst case holds ``autoattack+``
  when it is listed, and the places that report a worst case as *the* robustness number take it from
  there: ``robustlab export`` writes RobustBench's ``external`` from the worst case and
  ``autoattack_acc`` only from ``autoattack``; the CIFAR-10 study's records ran ``autoattack+``.
* ``apgd-ce-t``: apgd-ce -> apgd-t on survivors, a cheaper gradient-only pair. Not a version of the
  reference (whose versions are standard, plus, rand and custom), hence not called autoattack-anything;
  ``autoattack-fast``, its old name, is refused with the new one.
* ``fast``: robustlab's cheap protocol, fast-margin -> fast-targeted -> fast-square (margin loss with A³'s
  cosine steps and diversified restarts on near-boundary survivors, MALT-ranked targets, a reduced Square
  that escalates when gradients vanish; :mod:`robustlab.evaluate.fast`). Not AutoAttack and not named so;
  ``eval --verify K`` measures its gap to ``autoattack`` (:mod:`robustlab.evaluate.verify`).

:func:`autoattack_version` swaps ``autoattack`` (``autoattack+``) for ``autoattack-rand``
(``autoattack-rand+``) when the model is randomized.
"""

from __future__ import annotations

import functools
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
from robustlab.evaluate.names import attack_family
from robustlab.rules import MAX_STEPS, check_count

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


# name -> (function, fixed parameters): the reference's budgets (pyautoattack 0.2.0 ``_set_version('standard')``)
AUTOATTACK_PARTS: dict[str, tuple[AttackFn, dict[str, Any]]] = {
    "apgd-ce": (apgd, {"loss": "ce", "steps": 100, "restarts": 1}),
    "apgd-dlr": (apgd, {"loss": "dlr", "steps": 100, "restarts": 1}),
    "apgd-t": (apgd_targeted, {"steps": 100, "n_target_classes": 9, "restarts": 1}),
    "fab-t": (fab_targeted, {"steps": 100, "n_target_classes": 9, "restarts": 1}),
    "square": (square, {"queries": 5000, "p_init": 0.8, "restarts": 1}),
    **FAST_PARTS,
}
_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
_RAND = ("apgd-ce", "apgd-dlr")
# Reference-faithful settings: Square's reference draws and its 5,000 candidates after the initial point
# (pyautoattack square.py, n_queries=5000; our ``queries`` counts the initial point too); FAB with no final
# search (pyautoattack fab_base.py has none); under EOT the last misclassified iterate (autopgd_base.py
# ``x_best_adv``), eot_iter=20 (``_set_version('rand')``). The stronger variants state their settings too.
# APGD starts as the reference's does (``autopgd_base.py``: on the ball's face/sphere, ``start="surface"``).
_REFERENCE = {"apgd-ce": {"output": "reference", "start": "surface"},
              "apgd-t": {"output": "reference", "start": "surface"}, "fab-t": {"final_search": 0},
              "square": {"mode": "reference", "queries": 5001}}
_STRONG = {"apgd-ce": {"output": "best", "start": "ball"}, "apgd-t": {"output": "best", "start": "ball"},
           "fab-t": {"final_search": 3}, "square": {"mode": "strong"}}
_EOT = {"eot": 20}
# group -> (members in cascade order, per-member settings on top of each member's fixed parameters)
GROUPS: dict[str, tuple[tuple[str, ...], dict[str, dict[str, Any]]]] = {
    "autoattack": (_STANDARD, _REFERENCE),
    "autoattack+": (_STANDARD, _STRONG),
    "autoattack-rand": (_RAND, {m: {**_EOT, **_REFERENCE["apgd-ce"]} for m in _RAND}),
    "autoattack-rand+": (_RAND, {m: {**_EOT, **_STRONG["apgd-ce"]} for m in _RAND}),
    "apgd-ce-t": (("apgd-ce", "apgd-t"), {}),
    "fast": (FAST_MEMBERS, {}),
}
RANDOMIZED_VERSION = {"autoattack": "autoattack-rand", "autoattack+": "autoattack-rand+"}
RENAMED = {"autoattack-fast": "apgd-ce-t"}  # retired names -> the new one, said in the error
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
    "autoattack": "the reference's standard AutoAttack: apgd-ce -> apgd-t -> fab-t -> square on survivors",
    "autoattack+": "robustlab's stronger standard AutoAttack: per-sample Square, FAB final search",
    "autoattack-rand": "the reference's rand AutoAttack: apgd-ce -> apgd-dlr, gradients averaged over 20 passes (EOT)",
    "autoattack-rand+": "autoattack-rand ending at each sample's best-loss point (stronger)",
    "apgd-ce-t": "apgd-ce -> apgd-t on survivors (not a version of the reference AutoAttack)",
    **FAST_FORMS,
}


def parse_attack_name(name: str) -> tuple[str, int | None]:
    """``"pgd-20"`` -> ``("pgd", 20)``; ``"apgd-ce"`` -> ``("apgd-ce", None)``; unknown names raise UserError."""
    key, steps = attack_family(name)
    if key == "fgsm" or key in AUTOATTACK_PARTS or key in GROUPS:
        return key, None
    if steps is not None:
        if steps == 0:
            raise UserError(f"attack {name!r} runs no steps; use {key}-K with K >= 1, e.g. {key}-20")
        check_count(steps, MAX_STEPS, key=f"the step count of {key}-K")
        return key, steps
    if key in RENAMED:
        raise UserError(f"attack {name!r} is now called {RENAMED[key]} (it is not a version of the reference "
                        f"AutoAttack); use {RENAMED[key]}")
    raise UserError(
        f"unknown attack {name!r}; use fgsm, pgd-K, cw-K, apgd-ce, apgd-dlr, apgd-t, fab-t, square, "
        f"{', '.join(GROUPS)}; see robustlab list attacks"
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
        names, per_member = GROUPS[family]
        members = tuple(build_attack(m, eps=eps, norm=norm, step_size=step_size, settings=per_member.get(m))
                        for m in names)
        return AttackSpec(family, None, {"eps": eps, "norm": norm}, members=members)
    if family in AUTOATTACK_PARTS:
        fn, fixed = AUTOATTACK_PARTS[family]
        params = {"eps": eps, "norm": norm, **fixed, **(settings or {})}
        return AttackSpec(family, functools.partial(fn, **params), params, min_classes=MIN_CLASSES.get(family, 2))
    params = {"eps": eps, "norm": norm, "steps": steps, "step_size": step_size, "restarts": restarts}
    return AttackSpec(f"{family}-{steps}", functools.partial(pgd if family == "pgd" else cw, **params), params)


def autoattack_version(model: nn.Module, probe: torch.Tensor, attacks: list[str]) -> tuple[list[str], Flag | None]:
    """``attacks`` with ``autoattack`` (``autoattack+``) replaced by ``autoattack-rand`` (``autoattack-rand+``)
    if the model is randomized.

    Randomized means: two eval-mode forwards of ``probe`` differ (:func:`check_randomness`). The
    reference leaves this choice to the user and only warns; we make it, and the returned flag
    (``autoattack_rand``) says so in the record. Other names are kept, and so is a group whose rand
    version is listed too.
    """
    keys = [a.strip().lower() for a in attacks]
    swap = {k: RANDOMIZED_VERSION[k] for k in keys if k in RANDOMIZED_VERSION and RANDOMIZED_VERSION[k] not in keys}
    if not swap or check_randomness(model, probe) is None:
        return list(attacks), None
    chosen = [swap.get(k, a) for k, a in zip(keys, attacks)]
    said = " and ".join(f"{v} instead of {k}" for k, v in swap.items())
    return chosen, Flag(
        "autoattack_rand",
        f"the model is randomized (two forwards of the same input differ), so {said} ran (APGD-CE and "
        "APGD-DLR with 20-pass EOT, as the reference's rand version)",
    )


def group_that_ran(name: str, members: dict[str, dict[str, Any]]) -> str:
    """The group a record's entry ``name`` really ran, read from its members' parameters (``attack_params``).

    ``autoattack`` / ``autoattack-rand`` count as such only when every member lists the reference's
    settings of :data:`GROUPS`; records made before the ``+`` groups existed list none of them and ran the
    then-defaults (Square ``strong``, FAB's 3-step final search, the best-loss point under EOT), i.e. the
    ``+`` group. Any other name is returned as is.
    """
    if name not in RANDOMIZED_VERSION and name not in RANDOMIZED_VERSION.values():
        return name
    names, settings = GROUPS[name]
    faithful = all(members.get(m, {}).get(k) == v for m in names for k, v in settings.get(m, {}).items())
    return name if faithful else f"{name}+"


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
