"""The audit's features and its binarized classifier: the input of the model's last ``nn.Linear``, then a new head.

The reference replaces the classifier's last linear layer by a two-class one (``interior_boundary_discrimination_
attack``, ``active_tests/decision_boundary_binarization.py`` lines 1131-1134, its models exposing
``features_only=True``). robustlab reads the same vector from any ``nn.Module`` with no change to its code: a forward
pre-hook on the ``nn.Linear`` whose forward runs last (:func:`last_linear`) keeps that layer's input.
:class:`Binarized` runs the whole model and returns ``head(features)``, so attacks differentiate through the model
exactly as far as it lets them, and everything after the last linear layer is replaced.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.errors import UserError


def last_linear(model: nn.Module, probe: torch.Tensor) -> str:
    """The name (in ``model.named_modules()``) of the ``nn.Linear`` whose forward runs last on ``probe``."""
    calls: list[str] = []
    handles = [module.register_forward_pre_hook(lambda _m, _i, name=name: calls.append(name))
               for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    if not calls:
        raise UserError(f"the model ({type(model).__name__}) calls no nn.Linear in its forward: the audit's features "
                        "are the input of the model's last nn.Linear layer; end the model in one (e.g. a pooled "
                        "feature vector into nn.Linear(features, classes))")
    return calls[-1]


def features_and_logits(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, logits)`` of ``x``: the input of ``model``'s submodule ``layer``, flattened to (N, d), and the
    model's output. Gradients flow as the model lets them."""
    kept: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_pre_hook(lambda _m, inputs: kept.append(inputs[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return kept[-1].flatten(1), logits


class Binarized(nn.Module):
    """``x -> head(features(x))``: the model's features through a two-class head (0 inner, 1 boundary)."""

    def __init__(self, model: nn.Module, layer: str, head: nn.Linear) -> None:
        super().__init__()
        self.model, self.layer, self.head = model, layer, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(features_and_logits(self.model, self.layer, x)[0])
