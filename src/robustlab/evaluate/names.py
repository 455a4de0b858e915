"""Attack-name classification, the one leaf both the suite (:mod:`robustlab.evaluate.suite`) and the checks read.

Names follow EVALUATION.md: ``pgd-K`` and ``cw-K`` are stepped (``pgd`` / ``cw`` alone mean
:data:`DEFAULT_STEPS` steps); FGSM, PGD, CW, every APGD and FAB variant and ``apgd-ce-t`` are driven by
input gradients, and so are the ``fast`` group's ``fast-margin`` and ``fast-targeted`` (``square`` is not, and neither
is ``autoattack``, which contains Square). Nothing here checks that a name exists:
:func:`robustlab.evaluate.suite.parse_attack_name` does, on top of :func:`attack_family`.
"""

from __future__ import annotations

import re

STEPPED = re.compile(r"(pgd|cw)(?:-(\d+))?")
DEFAULT_STEPS = 20  # ``pgd`` / ``cw`` without a step count (EVALUATION.md)
# fast-*: the fast group's members
GRADIENT_FAMILIES = ("fgsm", "pgd", "cw", "apgd-ce-t", "fast-margin", "fast-targeted")
GRADIENT_PREFIXES = ("apgd", "fab")


def attack_family(name: str) -> tuple[str, int | None]:
    """``pgd-20`` -> (pgd, 20); ``pgd`` / ``cw`` alone mean 20 steps; any other name -> (name, None), lower-cased."""
    key = name.strip().lower()
    m = STEPPED.fullmatch(key)
    if m:
        return m.group(1), int(m.group(2)) if m.group(2) else DEFAULT_STEPS
    return key, None


def is_gradient(name: str) -> bool:
    """Attacks driven by input gradients (``autoattack`` proper contains Square, so it is not one)."""
    fam, _ = attack_family(name)
    return fam in GRADIENT_FAMILIES or fam.startswith(GRADIENT_PREFIXES)


def is_iterative_gradient(name: str) -> bool:
    """A gradient attack other than the one-step FGSM."""
    return is_gradient(name) and attack_family(name)[0] != "fgsm"
