"""The method interface: a training objective is one loss function, the loop never knows which.

``Method.loss(model, x, y, step=...)`` crafts whatever adversarial inputs it needs, runs the model
in train mode for the update, and returns ``(scalar loss, parts)`` where ``parts`` holds detached
tensors named after the loss components (logged every N steps without a host sync per step).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from robustlab.attacks._common import eval_mode
from robustlab.attacks.pgd import pgd
from robustlab.config import AttackConfig
from robustlab.registry import Registry

Parts = dict[str, torch.Tensor]
METHODS: Registry[Callable[..., "Method"]] = Registry("method")


class Method:
    """Base class of training objectives. Subclasses implement :meth:`per_sample_loss`.

    ``attack`` is the training attack's settings; ``generator`` the seeded source of the attack's
    randomness (saved in checkpoints so a resumed run draws the same random starts).
    """

    def __init__(self, attack: AttackConfig, generator: torch.Generator) -> None:
        self.attack = attack
        self.generator = generator

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: int = 0, reduction: str = "mean"
    ) -> tuple[torch.Tensor, Parts]:
        """The objective to minimise and its detached components (batch means)."""
        per_sample, parts = self.per_sample_loss(model, x, y, step=step)
        reduced = per_sample.mean() if reduction == "mean" else per_sample
        parts = {k: v.detach().float().mean() for k, v in parts.items()}
        parts["loss"] = per_sample.detach().float().mean()
        return reduced, parts

    def per_sample_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: int) -> tuple[torch.Tensor, Parts]:
        raise NotImplementedError

    def craft(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        loss: Any = "ce",
        x_init: torch.Tensor | None = None,
        targeted: bool = False,
    ) -> torch.Tensor:
        """The training adversary: PGD with the configured settings, final iterate (no early stop).

        Runs with the model in eval mode when ``attack.bn_mode == "eval"`` (our default, see
        METHODS.md §1) and restores the previous mode afterwards.
        """
        a = self.attack
        if a.steps == 0 or a.eps == 0:
            return x.detach()
        with eval_mode(model, a.bn_mode == "eval"):
            return pgd(
                model, x, y, eps=a.eps, norm=a.norm, steps=a.steps, step_size=a.step_size,
                loss=loss, random_start=a.random_start and x_init is None, x_init=x_init,
                targeted=targeted, early_stop=False, generator=self.generator,
            )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint (the attack generator's state)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample correctness as floats (for ``parts``)."""
    return (logits.argmax(1) == y).float()
