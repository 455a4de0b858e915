"""Attacks as small pure functions: ``attack(model, x, y, *, eps, ...) -> x_adv``.

Inputs in [0, 1]; ε in pixel units (a float or an (N,) tensor); results inside the ε-ball and [0, 1].
Attacks never change the model's mode; the caller decides (``eval_mode``).
"""

from robustlab.attacks._common import eval_mode
from robustlab.attacks.apgd import apgd, apgd_targeted
from robustlab.attacks.counting import PassCount, Stopwatch, count_passes
from robustlab.attacks.fab import fab, fab_targeted
from robustlab.attacks.losses import ce, dlr, dlr_targeted, margin
from robustlab.attacks.pgd import cw, cw_loss, fgsm, pgd
from robustlab.attacks.square import square

__all__ = [
    "PassCount", "Stopwatch", "apgd", "apgd_targeted", "ce", "count_passes", "cw", "cw_loss", "dlr",
    "dlr_targeted", "eval_mode", "fab", "fab_targeted", "fgsm", "margin", "pgd", "square",
]
