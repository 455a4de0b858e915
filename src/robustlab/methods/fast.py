"""Single-step ("fast") adversarial training: FGSM-RS and N-FGSM.

Sources:
- FGSM-RS: Eric Wong, Leslie Rice, J. Zico Kolter, "Fast is better than free: Revisiting adversarial
  training", ICLR 2020 (arXiv 2001.03994): δ₀ ~ U(−ε, ε)ᵈ, one signed-gradient step of α = 1.25ε
  from x + δ₀, projected to the ε-ball and [0, 1].
- N-FGSM: Pau de Jorge, Adel Bibi, Riccardo Volpi, Amartya Sanyal, Philip H. S. Torr, Grégory Rogez,
  Puneet K. Dokania, "Make Some Noise: Reliable and Efficient Single-Step Adversarial Training",
  NeurIPS 2022 (arXiv 2202.01181): η ~ U(−kε, kε)ᵈ with k = 2, one signed-gradient step of α = ε from
  x + η, clipped to [0, 1] only: no projection to the ε-ball (‖x' − x‖∞ ≤ 3ε).

The training loss is CE(f(x'), y) as in PGD-AT; both use the attack config's ``eps`` and ``norm``
(L∞ only) and ignore ``steps``, ``step_size`` and ``random_start``: the options ``step_ratio``
(α/ε) and ``noise_ratio`` (noise bound / ε) set the step and the noise. The start point x + δ₀ is
clipped to [0, 1] before the gradient, as in both papers' code. The attack runs in the mode of
``method.attack.bn_mode`` (eval by default [ours]; both papers attack in train mode).

The cyclic learning rate both papers train with is ``schedule.name: cyclic``; catastrophic
overfitting is watched by the per-epoch evaluation (:mod:`robustlab.train.overfit`).
Test time: a plain deterministic forward.
"""

from __future__ import annotations

from typing import Any

import torch

from robustlab.attacks._common import eval_mode, linf_bounds, per_sample
from robustlab.attacks.pgd import fgsm
from robustlab.config import AttackConfig, parse_number
from robustlab.errors import UserError
from robustlab.methods.base import METHODS
from robustlab.methods.objectives import pgd_at


def single_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step: float,
                noise: float, project: bool, generator: torch.Generator | None) -> torch.Tensor:
    """x' = clip(x + η + step·sign(∇ CE at x + η)), η ~ U(−noise, noise), start clipped to [0, 1].

    ``project``: also clip x' to the ε-ball around x (FGSM-RS); otherwise only to [0, 1] (N-FGSM).
    """
    eta = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * noise
    x_adv = fgsm(model, (x + eta).clamp(0.0, 1.0), y, eps=step)
    if project:
        lower, upper = linf_bounds(x, per_sample(eps, x))
        x_adv = torch.min(torch.max(x_adv, lower), upper)
    return x_adv.detach()


class _SingleStep(pgd_at):
    """PGD-AT's loss on a single-step x'; subclasses set the paper's ratios and projection."""

    project = True

    def __init__(self, attack: AttackConfig, generator: torch.Generator, *, step_ratio: float,
                 noise_ratio: float) -> None:
        super().__init__(attack, generator)
        if attack.norm != "linf":
            raise UserError(f"method {type(self).__name__} is an L-inf method; set method.attack.norm=linf")
        self.step_ratio = parse_number(step_ratio, "method.options.step_ratio")
        self.noise_ratio = parse_number(noise_ratio, "method.options.noise_ratio")
        if self.step_ratio < 0 or self.noise_ratio < 0:
            raise UserError("method.options.step_ratio and noise_ratio must be >= 0")

    def craft(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **_: Any) -> torch.Tensor:
        eps = self.attack.eps
        if eps == 0:
            return x.detach()

        def make() -> torch.Tensor:
            with eval_mode(model, self.attack.bn_mode == "eval"):
                return single_step(model, x, y, eps=eps, step=self.step_ratio * eps, noise=self.noise_ratio * eps,
                                   project=self.project, generator=self.generator)

        return self.tape(make)


@METHODS.register
class fgsm_rs(_SingleStep):
    """FGSM-RS (Wong et al., ICLR 2020): uniform start in the ε-ball, step 1.25ε, projected to the ε-ball.

    Options: ``step_ratio`` (1.25), ``noise_ratio`` (1.0). See :mod:`robustlab.methods.fast`.
    """


    def __init__(self, attack: AttackConfig, generator: torch.Generator, *, step_ratio: float = 1.25,
                 noise_ratio: float = 1.0) -> None:
        super().__init__(attack, generator, step_ratio=step_ratio, noise_ratio=noise_ratio)


@METHODS.register
class n_fgsm(_SingleStep):
    """N-FGSM (de Jorge et al., NeurIPS 2022): noise U(−2ε, 2ε), step ε, no projection to the ε-ball.

    Options: ``step_ratio`` (1.0), ``noise_ratio`` (2.0). See :mod:`robustlab.methods.fast`.
    """

    project = False

    def __init__(self, attack: AttackConfig, generator: torch.Generator, *, step_ratio: float = 1.0,
                 noise_ratio: float = 2.0) -> None:
        super().__init__(attack, generator, step_ratio=step_ratio, noise_ratio=noise_ratio)
