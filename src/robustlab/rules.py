"""Values of the right type that make no sense: refused (UserError) or warned about, by rule.

The config's type checks (:mod:`robustlab.config`) accept any float for ε; these rules catch what a
type cannot: an L∞ budget above 1 in [0, 1] pixel space (``eps=8`` meant ``8/255``), a step larger
than the budget, an adversarial method with no attack steps, SGD momentum of 1 or more (the update
never decays), a negative gradient-clipping norm (it flips the gradient). Refusals name the key and
the fix; warnings are returned as lines for the caller to log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from robustlab.errors import UserError

if TYPE_CHECKING:
    from robustlab.config import RunConfig


STANDARD_EPS = {"linf": 8 / 255, "l2": 0.5}  # RobustBench's standard CIFAR-10 budgets (Croce et al. 2021)


def check_budget(eps: float, norm: str, *, key: str) -> None:
    """Refuse a negative ε, and an L∞ ε above 1: inputs lie in [0, 1], so it would allow any image at all."""
    if eps < 0:
        raise UserError(f"{key}={eps:g} is negative; a budget is >= 0, e.g. 8/255")
    if norm == "linf" and eps > 1:
        raise UserError(f"{key}={eps:g} is above 1 for linf in [0, 1] pixel space; write 8/255, not 8")


def check_step_size(step_size: float, *, key: str = "--step-size") -> None:
    """Refuse a step size of 0 or less: PGD would never move, and every sample would count as robust."""
    if not step_size > 0:
        raise UserError(f"{key}={step_size:g} must be > 0 (the attack would never move, so every sample would look "
                        "robust); omit it for the default eps/4")


# Bounds on the counts a user types (issue 33: pgd-99999999999999999999 and --restarts 999999999999 ran until
# killed). Ours, generous: 1,000x AutoAttack's 100 iterations per run and its largest restart count (apgd-ce at
# 5 restarts in its "plus" version) times 200.
MAX_STEPS = 100_000
MAX_RESTARTS = 1_000
MAX_SEED = 2**32 - 1  # numpy's seed range; a larger one overflowed torch's 64-bit seeds with a traceback


def check_count(value: int, limit: int, *, key: str) -> None:
    """Refuse a count above ``limit`` in one line (an evaluation that cannot finish is never started)."""
    if value > limit:
        raise UserError(f"{key}={value} is above the limit of {limit:,}; an evaluation that long would not finish, "
                        f"use at most {limit:,}")


def check_seed(seed: int, *, key: str) -> None:
    """Refuse a seed outside ``[0, MAX_SEED]`` in one line."""
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{key}={seed} is outside 0..{MAX_SEED:,}; use a seed in that range")


def eval_budget_warnings(eps: float) -> list[str]:
    """ε = 0 is a clean evaluation under an attack's name."""
    return (["eps is 0: every attack returns the clean input, so robust accuracy equals clean accuracy"] if eps == 0
            else [])


def budget_warnings(eps: float, step_size: float, *, key: str) -> list[str]:
    """A step larger than the budget makes every step a jump to the boundary (allowed, rarely meant)."""
    if eps > 0 and step_size > eps:
        return [f"{key} step size {step_size:g} is larger than eps {eps:g}; every step lands on the boundary"]
    return []


def check_config(cfg: RunConfig) -> None:
    """The refusals for a training config (called by :func:`robustlab.config.build_config`)."""
    attack = cfg.method.attack
    check_seed(cfg.seed, key="seed")
    check_budget(attack.eps, attack.norm, key="method.attack.eps")
    base = cfg.method.name.partition("+")[0]
    if base != "natural" and attack.steps == 0:
        raise UserError(
            f"method.attack.steps=0 makes {cfg.method.name} train on clean inputs; set steps >= 1 or use "
            "method.name=natural"
        )
    if cfg.optim.momentum >= 1:
        raise UserError(f"optim.momentum={cfg.optim.momentum:g} must be below 1 (0.9 is usual); at 1 or more updates "
                        "never decay")
    if cfg.optim.grad_clip is not None and cfg.optim.grad_clip < 0:
        raise UserError(f"optim.grad_clip={cfg.optim.grad_clip:g} must be >= 0 or null; a negative norm flips the "
                        "gradient")


def config_warnings(cfg: RunConfig) -> list[str]:
    """The warnings for a training config (logged when a run starts)."""
    attack = cfg.method.attack
    found = budget_warnings(attack.eps, attack.step_size, key="method.attack")
    if cfg.method.name.partition("+")[0] != "natural" and attack.eps == 0:
        found.append(f"method.attack.eps=0 makes {cfg.method.name} train on clean inputs; set eps > 0 or use "
                     "method.name=natural")
    if cfg.train.checkpoint_rule != "last" and cfg.data.eval_split == "test":
        found.append(f"train.checkpoint_rule={cfg.train.checkpoint_rule} picks the best checkpoint on test images "
                     "(data.eval_split=test), so an evaluation of it is flagged selected_on_test; hold out training "
                     "images instead with data.val_examples=1000")
    return found
