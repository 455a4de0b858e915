"""Model-specific adaptive attacks (EVALUATION.md check 7), built for the model at hand.

``build_adaptive(model, ...)`` returns one :class:`AttackSpec` group whose members run as a cascade
on the samples still robust; the runner judges every output on the real model's final logits, so an
attack that optimises a surrogate (an auxiliary head, a fixed gate, a source model) only counts
where it fools the deployed model. Members, when they apply:

- ``pgd-aux:<key>``: PGD on CE of one auxiliary logit set (FSR ``z_pos``/``z_rec``, ANCRA ``p1``/``p2``).
- ``pgd-final+aux``: PGD on CE(final) + mean CE(aux heads).
- ``pgd-gate:<c>``: ANCRA's hard argmax gates fixed to class c, for every class c (the gate choice
  has no gradient, so attacks on the live model see a piecewise function).
- ``pgd-eot``: PGD on the mean logits of several forwards, for models whose eval mode is random.
- ``transfer``: PGD-K crafted on a source model (e.g. PGD-AT of the same architecture).
All PGD members use the last iterate (``early_stop=False``), K steps, a uniform random start.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from robustlab.attacks.pgd import pgd
from robustlab.evaluate.checks import check_randomness
from robustlab.evaluate.masking import through_surrogate
from robustlab.evaluate.state import model_hash
from robustlab.evaluate.suite import AttackSpec
from robustlab.methods.aux import AuxStack, capture_aux

AUX_KEYS = ("z_pos", "z_neg", "z_rec", "p1", "p2")


def recorded_outputs(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The names of the auxiliary outputs a model records on an eval-mode forward (none for plain models)."""
    with torch.no_grad(), capture_aux(model) as aux:
        model(x)
    return list(aux)


class MeanOfDraws(nn.Module):
    """Expectation over transformation: the mean logits of ``draws`` forwards of a random model."""

    def __init__(self, model: nn.Module, draws: int) -> None:
        super().__init__()
        self.model, self.draws = model, draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(x) for _ in range(self.draws)]).mean(0)


def _stacked_ce(stack: torch.Tensor, y: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """Per-sample weighted CE over the (N, 1+B, K) stack of final and auxiliary logits."""
    losses = [nn.functional.cross_entropy(stack[:, i].float(), y, reduction="none") for i in range(stack.shape[1])]
    return sum(w * loss for w, loss in zip(weights, losses))


def _pgd_surrogate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, surrogate: str, keys: tuple[str, ...],
                   gate: int | None, draws: int, generator: torch.Generator | None, **attack: Any) -> torch.Tensor:
    """PGD on a surrogate of ``model``: an auxiliary head, final+aux, a fixed gate, or the EOT mean."""
    if surrogate == "eot":
        return pgd(MeanOfDraws(model, draws), x, y, early_stop=False, generator=generator, **attack)
    gate_t = None if gate is None else torch.full_like(y, gate)
    stack = AuxStack(model, keys, gate=gate_t)
    if surrogate == "aux":
        weights = (0.0, 1.0)
    elif surrogate == "final+aux":
        weights = (1.0,) + (1.0 / len(keys),) * len(keys)
    else:  # fixed gate: attack the gated final logits
        weights = (1.0,)
    return pgd(stack, x, y, loss=functools.partial(_stacked_ce, weights=weights), early_stop=False, generator=generator,
               **attack)


def _transfer(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, source: nn.Module,
              generator: torch.Generator | None, **attack: Any) -> torch.Tensor:
    """PGD crafted on ``source`` (best iterate against the source), evaluated on ``model`` by the runner."""
    return pgd(source, x, y, generator=generator, **attack)


def build_adaptive(
    model: nn.Module, probe: torch.Tensor, *, eps: float, norm: str, step_size: float, steps: int = 20,
    num_classes: int, transfer_source: nn.Module | None = None, eot_draws: int = 8,
    through: nn.Module | None = None, gradients: bool = True,
) -> AttackSpec | None:
    """The adaptive group for ``model`` (``None`` when nothing applies to a plain deterministic model).

    The routing of :mod:`robustlab.evaluate.masking`: ``through`` (the straight-through surrogate in use)
    is what the members driven by ``model``'s gradients attack; ``gradients=False`` (no input gradient and no
    surrogate) leaves them out. Transfer is crafted on its source either way."""
    attack = {"eps": eps, "norm": norm, "steps": steps, "step_size": step_size}
    recorded = recorded_outputs(model, probe)
    keys = tuple(k for k in AUX_KEYS if k in recorded)
    members: list[AttackSpec] = []

    def add(name: str, fn: Any, recorded: dict[str, Any] | None = None, **params: Any) -> None:
        """A member calling ``fn`` with the attack settings and ``params``; the record lists ``recorded`` too."""
        shown = {k: v for k, v in params.items() if not isinstance(v, nn.Module)}
        spec = AttackSpec(name, functools.partial(fn, **attack, **params), {**attack, **shown, **(recorded or {})})
        if fn is _transfer or through is None:
            members.append(spec)
        elif gradients:
            members.append(through_surrogate(spec, through, name))

    if not gradients:
        keys = ()

    for key in keys:
        add(f"pgd-aux:{key}", _pgd_surrogate, surrogate="aux", keys=(key,), gate=None, draws=1)
    if keys:
        add("pgd-final+aux", _pgd_surrogate, surrogate="final+aux", keys=keys, gate=None, draws=1)
    if gradients and any(k.startswith("gate") for k in recorded):
        for c in range(num_classes):
            add(f"pgd-gate:{c}", _pgd_surrogate, surrogate="gate", keys=(), gate=c, draws=1)
    if gradients and check_randomness(model, probe) is not None:
        add("pgd-eot", _pgd_surrogate, surrogate="eot", keys=(), gate=None, draws=eot_draws)
    if transfer_source is not None:
        add("transfer", _transfer, recorded={"source_sha256": model_hash(transfer_source)},
            source=transfer_source.eval())
    if not members:
        return None
    return AttackSpec("adaptive", None, {"eps": eps, "norm": norm}, members=tuple(members))
