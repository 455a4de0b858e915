"""robustlab's attacks in AttackBench's attack signature, for ``benchmarks/attackbench.py``.

AttackBench (Cinà et al., "AttackBench: evaluating gradient-based attacks for adversarial examples", AAAI 2025;
``attackbenchlib`` 2.0.2 on PyPI) calls an attack as ``attack(model=..., inputs=..., labels=..., targeted=...,
targets=...)`` and reads back the adversarial inputs in [0, 1]. Its harness (``attackbench.run_attack``) wraps the
model to count every forward and backward pass of each sample, stops answering a sample past its budget (2,000
passes) and records d*, the smallest perturbation of any misclassified point the attack made the model evaluate.
Two adapters, importable without AttackBench:

* :func:`fixed_eps_attack`: one robustlab attack or group (``apgd-ce``, ``fast``, ...) at one ε, run on a batch as
  ``robustlab eval`` runs it (:func:`robustlab.evaluate.runner.attack_batch`: the members in order on the samples
  still robust, each output judged inside the ball and [0, 1]); a sample it does not break comes back unchanged.
* :func:`min_norm_attack`: the same inside AttackBench's ε search, its way of scoring fixed-budget attacks as
  minimum-norm ones (``apgd_minimal_wrapper`` in ``attackbench/attacks/original/auto_pgd.py``, and its adv-lib
  twin): per sample, ε starts at :data:`INIT_EPS` (``attackbench.attacks.minimal_init_eps``), doubles while the
  attack fails, then bisects between the largest failed and the smallest successful ε, for :data:`SEARCH_STEPS`
  runs (``minimal_search_steps``); the successful end starts at twice :data:`MAX_EPS` (the ``max_eps`` of its
  minimal wrappers). Each sample keeps its own ε: an (N,) tensor handed to every member.

Deviations [ours]: success at an ε is the runner's verdict on the attack's output (AttackBench's wrappers run one
more forward per search step for it); the attacks' generators are seeded from ``seed`` and the adapter's call
count, so a benchmark repeats exactly. Untargeted only; attacks with a step size in pixels (``pgd-K``, ``cw-K``)
are refused, since one step size cannot serve every ε of a search. The adapters stop when the harness stops
answering: past a sample's budget AttackBench returns made-up logits (the label of the nearest original image,
no gradient), so a forward in which its pass counter (``num_forwards``) did not move had no real answer, and the
adapter returns what it had found (:class:`HarnessSpent`); without this, ``fast`` spent its remaining search steps
running Square on made-up answers (over 20 minutes for 100 CIFAR-10 images) and "broke" samples at ε near 1 where
an image lies nearest another original. A model without such a counter is never stopped.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from robustlab.attacks._common import check_norm, eval_mode
from robustlab.errors import UserError
from robustlab.evaluate.runner import attack_batch
from robustlab.evaluate.state import AttackCost
from robustlab.evaluate.suite import AttackSpec, build_attack

AttackBenchAttack = Callable[..., torch.Tensor]
INIT_EPS = {"linf": 1 / 255, "l2": 1.0}  # attackbench.attacks.minimal_init_eps
MAX_EPS = {"linf": 1.0, "l2": math.inf}  # the minimal wrappers' max_eps (None, i.e. unbounded, for L2)
SEARCH_STEPS = 20  # attackbench.attacks.minimal_search_steps


def attack_spec(name: str, *, eps: float, norm: str) -> AttackSpec:
    """The configured attack ``name`` (as ``robustlab eval --attacks`` names it) for the adapters."""
    spec = build_attack(name, eps=eps, norm=check_norm(norm), step_size=0.0)
    if any("step_size" in member.params for member in spec.members or (spec,)):
        raise UserError(f"attack {name!r} takes a step size in pixels, which cannot follow an ε search; use apgd-ce, "
                        "apgd-dlr, apgd-t, fab-t, square, fgsm or a group such as fast or autoattack")
    return spec


class HarnessSpent(BaseException):
    """A forward of the harness's model got no real answer for any of its rows. A ``BaseException``, as
    ``KeyboardInterrupt``: the runner turns a model's ``Exception`` into a one-line error and must let this pass."""


class _Answered(nn.Module):
    """``model`` behind a check that its harness answered: raises :class:`HarnessSpent` after a forward that left the
    harness's pass counter (``num_forwards``, AttackBench's ``BenchModel``) unchanged; any other model passes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        counter = getattr(self.model, "num_forwards", None)
        before = int(counter.sum()) if isinstance(counter, torch.Tensor) else None
        out = self.model(x)
        if before is not None and int(self.model.num_forwards.sum()) == before:
            raise HarnessSpent
        return out


def _untargeted(targeted: bool) -> None:
    if targeted:
        raise UserError("robustlab's attacks run untargeted here; call them with targeted=False")


def attack_once(
    model: nn.Module, spec: AttackSpec, inputs: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor, *,
    seed: int, call: int,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(points, adversarial, spent)``: ``spec`` at the per-sample budgets ``eps`` on the clean-correct rows; a broken
    row's point is the attack's output, every other row its input; ``adversarial`` also holds the clean-wrong rows;
    ``spent``: the harness stopped answering (the points are what the members had finished by then)."""
    x = inputs.detach()
    points = x.clone()
    adversarial = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    answered = _Answered(model)
    try:
        with eval_mode(answered):
            with torch.no_grad():
                logits = answered(x)
            adversarial |= logits.argmax(1) != labels
            todo = (~adversarial).nonzero().squeeze(1)

            def keep(rows: torch.Tensor, _member: int, adv: torch.Tensor) -> None:
                points[todo[rows]] = adv
                adversarial[todo[rows]] = True

            if todo.numel():
                attack_batch(answered, spec, x[todo], labels[todo], eps=eps[todo], norm=spec.params["norm"],
                             seed=seed, batch=call, index=0, cost=AttackCost(), num_classes=logits.shape[1],
                             skipped=[], on_break=keep)
    except HarnessSpent:
        return points, adversarial, True
    return points, adversarial, False


def fixed_eps_attack(name: str, *, eps: float, norm: str = "linf", seed: int = 0) -> AttackBenchAttack:
    """``name`` at budget ``eps`` in AttackBench's signature."""
    spec = attack_spec(name, eps=eps, norm=norm)
    calls = itertools.count()

    def attack(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None,
               targeted: bool = False) -> torch.Tensor:
        _untargeted(targeted)
        budget = torch.full((len(inputs),), float(eps), device=inputs.device)
        return attack_once(model, spec, inputs, labels, budget, seed=seed, call=next(calls))[0]

    return attack


@dataclass
class EpsSearch:
    """AttackBench's per-sample ε search: ``eps`` the next budget to try, ``low`` the largest that failed (0 at
    first), ``high`` the smallest that succeeded (twice the maximum at first), ``found`` whether one did."""

    eps: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    found: torch.Tensor

    @classmethod
    def start(cls, n: int, init_eps: float, max_eps: float, device: torch.device) -> "EpsSearch":
        return cls(eps=torch.full((n,), float(init_eps), device=device), low=torch.zeros(n, device=device),
                   high=torch.full((n,), 2 * max_eps, device=device), found=torch.zeros(n, dtype=torch.bool,
                                                                                    device=device))

    def update(self, success: torch.Tensor) -> torch.Tensor:
        """Take the outcome at ``eps``; returns the samples whose best point improved, and moves ``eps``."""
        better = success & (self.eps < self.high)
        self.found |= better
        self.low = torch.where(better, self.low, self.eps)
        self.high = torch.where(better, self.eps, self.high)
        bisect = self.found | (2 * self.low >= self.high)
        self.eps = torch.where(bisect, (self.low + self.high) / 2, 2 * self.low)
        return better


def min_norm_attack(
    name: str, *, norm: str = "linf", init_eps: float | None = None, max_eps: float | None = None,
    search_steps: int = SEARCH_STEPS, seed: int = 0,
) -> AttackBenchAttack:
    """``name`` inside AttackBench's ε search: returns, per sample, the adversarial point found at the smallest
    successful ε (the input where none succeeded)."""
    norm = check_norm(norm)
    init = INIT_EPS[norm] if init_eps is None else init_eps
    spec = attack_spec(name, eps=init, norm=norm)
    upper = MAX_EPS[norm] if max_eps is None else max_eps
    calls = itertools.count()

    def attack(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None,
               targeted: bool = False) -> torch.Tensor:
        _untargeted(targeted)
        search = EpsSearch.start(len(inputs), init, upper, inputs.device)
        best = inputs.detach().clone()
        for _ in range(search_steps):
            points, adversarial, spent = attack_once(model, spec, inputs, labels, search.eps, seed=seed,
                                                     call=next(calls))
            better = search.update(adversarial)
            best[better] = points[better]
            if spent:
                break
        return best

    return attack
