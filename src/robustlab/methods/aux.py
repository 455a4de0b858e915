"""Auxiliary outputs of plug-in modules, reachable by losses and adaptive attacks without touching ``forward``.

Plug-ins (FSR, ANCRA) insert :class:`AuxModule` subclasses into a model. ``model(x)`` still returns
logits only (METHODS.md §0). Inside ``with capture_aux(model) as aux:`` every forward of ``model``
records its auxiliary outputs into the dict ``aux`` (a later forward in the same block overwrites
the keys of an earlier one); outside a capture the modules record nothing and the auxiliary heads
that only serve the loss are not even evaluated.

Keys written (tensors keep their autograd graph, so a loss or an attack can differentiate them):

- FSR (:mod:`robustlab.methods.fsr`): ``"z_pos"``, ``"z_neg"``, ``"z_rec"``: auxiliary logits (N, K)
  of the robust part f⁺, the non-robust part f⁻ and the recalibrated part f̃; ``"mask"``: the
  separation mask m (N, C, H, W).
- ANCRA (:mod:`robustlab.methods.ancra`): ``"p1"``, ``"p2"``: auxiliary logits (N, K) of the
  reverse-attention blocks in forward order (only ``"p1"`` when the last stage has one block);
  ``"gate1"``, ``"gate2"``: the class (N,) whose head row scaled that block's features.

Besides collecting outputs, a capture passes per-batch inputs that ``forward(x)`` cannot take:

- ``labels``: the classes train-mode gates use (ANCRA's reverse attention gates on the true label in
  train mode). Ignored in eval mode, which never uses labels.
- ``gate``: classes forced on every gate in *both* modes: an evaluation tool for attacks "with the
  gate fixed to each candidate class" (METHODS.md §3, evaluation warning).
- ``generator``: the ``torch.Generator`` of train-mode noise (FSR's Gumbel-sigmoid mask); without it
  the global torch RNG is used. Eval mode draws no noise.

Example (an adaptive attack on ANCRA's auxiliary heads)::

    with capture_aux(model) as aux:
        logits = model(x)
    loss = F.cross_entropy(logits, y) + F.cross_entropy(aux["p1"], y) + F.cross_entropy(aux["p2"], y)

:class:`AuxStack` wraps a model so that its forward returns the final and auxiliary logits stacked,
for attack functions that take a ``(logits, y) -> (N,)`` loss.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class AuxCapture:
    """The state one :func:`capture_aux` block shares with every :class:`AuxModule` of the model."""

    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: torch.Tensor | None = None
    gate: torch.Tensor | None = None
    generator: torch.Generator | None = None


class AuxModule(nn.Module):
    """Base of modules a plug-in inserts: ``self.capture`` is the active :class:`AuxCapture` or None."""

    capture: AuxCapture | None

    def __init__(self) -> None:
        super().__init__()
        self.capture = None

    def record(self, **outputs: torch.Tensor) -> None:
        """Store auxiliary outputs in the active capture (no-op outside one)."""
        if self.capture is not None:
            self.capture.outputs.update(outputs)


def aux_modules(model: nn.Module) -> list[AuxModule]:
    """The plug-in modules of ``model`` that record auxiliary outputs, in registration order."""
    return [m for m in model.modules() if isinstance(m, AuxModule)]


@contextlib.contextmanager
def capture_aux(
    model: nn.Module,
    *,
    labels: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the auxiliary outputs of every forward of ``model`` inside the block (see module doc).

    Yields the dict the forwards fill. Captures nest: the previous capture is restored on exit.
    A model without plug-in modules yields a dict that stays empty.
    """
    modules = aux_modules(model)
    state = AuxCapture(labels=labels, gate=gate, generator=generator)
    previous = [m.capture for m in modules]
    for m in modules:
        m.capture = state
    try:
        yield state.outputs
    finally:
        for m, p in zip(modules, previous):
            m.capture = p


class AuxStack(nn.Module):
    """``model`` whose forward returns final and auxiliary logits stacked: (N, 1 + len(keys), K).

    Index 0 is ``model(x)``, index ``1 + i`` is ``aux[keys[i]]``. ``labels`` / ``gate`` are passed to
    :func:`capture_aux` (they must match the batch given to forward). Meant for attacks driven by a
    custom per-sample loss (their success checks would read the stacked tensor as logits, so use it
    with ``early_stop=False`` or a loss-only attack). Mode changes on the wrapper reach the model.
    """

    def __init__(
        self,
        model: nn.Module,
        keys: Sequence[str],
        *,
        labels: torch.Tensor | None = None,
        gate: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.keys = tuple(keys)
        self.labels = labels
        self.gate = gate
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with capture_aux(self.model, labels=self.labels, gate=self.gate) as aux:
            logits = self.model(x)
        missing = [k for k in self.keys if k not in aux]
        if missing:
            raise KeyError(f"the model recorded no auxiliary output {missing[0]!r}; recorded: {sorted(aux)}")
        return torch.stack([logits] + [aux[k].to(logits.dtype) for k in self.keys], dim=1)


def append_to(container: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """``container`` followed by ``module``, keeping the container's state-dict keys.

    An ``nn.Sequential`` gets ``module`` appended under ``name`` (its own children keep their keys);
    an ``nn.Identity`` becomes ``Sequential(name=module)``. Returns the container to store back.
    """
    if isinstance(container, nn.Identity):
        return nn.Sequential(OrderedDict([(name, module)]))
    if isinstance(container, nn.Sequential):
        if name in container._modules:
            raise ValueError(f"the container already has a child named {name!r}")
        container.add_module(name, module)
        return container
    raise TypeError(f"cannot append a module after a {type(container).__name__}; expected nn.Sequential or nn.Identity")
