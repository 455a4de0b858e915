"""The method interface: a training objective is one loss function, the loop never knows which.

``Method.loss(model, x, y, step=...)`` crafts whatever adversarial inputs it needs, runs the model
in train mode for the update, and returns ``(scalar loss, parts)`` where ``parts`` holds detached
tensors named after the loss components (logged every N steps without a host sync per step).

Composition (``method: trades+fsr``): a base objective (§1) computes :class:`Terms` through
:meth:`Method.terms`, calling the model only through :meth:`Method.forward` with a role
(``"clean"`` or ``"adv"``); a :class:`PlugIn` wraps the base, may add modules to the model
(:meth:`prepare_model`), may observe or change each forward through its own ``forward`` hook, and
adds its terms to the base's. The loop sees one Method either way.

Step hooks: the loop calls :meth:`Method.start_epoch` before each epoch and
:meth:`Method.before_step` between the loss's backward and the optimiser step (AWP restores the
weights it perturbed there; AFD's ``update: released`` takes its extra step). Every adversarial input a method crafts
goes through its :class:`CraftTape` (shared along a plug-in chain), so a wrapper can recompute the loss on the same x'.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from robustlab.attacks._common import eval_mode
from robustlab.attacks.pgd import pgd
from robustlab.config import AttackConfig
from robustlab.errors import UserError
from robustlab.registry import Registry

Parts = dict[str, torch.Tensor]
METHODS: Registry[Callable[..., "Method"]] = Registry("method")
PLUGINS: Registry[Callable[..., "PlugIn"]] = Registry("plug-in")


@dataclass
class Terms:
    """A base objective's per-sample loss, its parts, and what plug-ins may build on."""

    per_sample: torch.Tensor
    parts: Parts
    x_adv: torch.Tensor | None = None
    logits_clean: torch.Tensor | None = None
    logits_adv: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class CraftTape:
    """Records the adversarial inputs crafted during one loss and replays them, in call order.

    Outside :meth:`session` a call just runs ``make``. In a "record" session each result is kept
    with the state of ``generator`` after it; in a "replay" session a call returns the kept result
    and sets the generator to the kept state, so the draws that follow (mask noise, negatives, the
    next random start) repeat those of the recorded pass. AWP records on its first pass (at the
    unperturbed weights) and replays on its second. Calls nested in a recorded call (TRADES wraps
    its reference forward and its ``craft`` in one) are part of it: they run, unrecorded.
    """

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.mode: str | None = None
        self.items: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.position = 0
        self.depth = 0

    def __call__(self, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.depth:
            return make()
        if self.mode == "replay":
            if self.position >= len(self.items):
                raise RuntimeError("the replayed loss crafted more inputs than the recorded one")
            out, state = self.items[self.position]
            self.position += 1
            self.generator.set_state(state)
            return out
        self.depth += 1
        try:
            out = make()
        finally:
            self.depth -= 1
        if self.mode == "record":
            self.items.append((out, self.generator.get_state()))
        return out

    @contextlib.contextmanager
    def session(self, mode: str) -> Iterator[None]:
        """``mode`` "record" (start a new tape) or "replay" (from its first item) for the block."""
        if mode == "record":
            self.items = []
        self.mode, self.position = mode, 0
        try:
            yield
        finally:
            self.mode = None


class Method:
    """Base class of training objectives. Subclasses implement :meth:`terms`.

    ``attack`` is the training attack's settings; ``generator`` the seeded source of the attack's
    randomness (saved in checkpoints so a resumed run draws the same random starts). The adversarial
    bases (PGD-AT, TRADES, MART) also implement :meth:`adversarial` (their x') and :meth:`head_loss`
    (their per-sample formula on one head), which plug-ins call instead of naming the base.
    """

    # whether head_loss reads the clean logits (TRADES, MART), so their forward keeps its gradient
    clean_in_loss = False

    def __init__(self, attack: AttackConfig, generator: torch.Generator) -> None:
        self.attack = attack
        self.generator = generator
        self.forward_hook: Callable[[nn.Module, torch.Tensor, torch.Tensor, str], torch.Tensor] | None = None
        self.attack_precision: Callable[[], ContextManager[Any]] = contextlib.nullcontext
        self.tape = CraftTape(generator)

    def set_attack_precision(self, precision: Callable[[], ContextManager[Any]]) -> None:
        """The context (e.g. ``torch.autocast``) the training attack runs in, whatever wraps the update.

        The trainer sets it from ``train.attack_amp`` (fp32 by default: the official codes craft x'
        in fp32 even where the update uses bf16). Without it the attack runs in the caller's precision.
        """
        self.attack_precision = precision

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: int = 0, reduction: str = "mean"
    ) -> tuple[torch.Tensor, Parts]:
        """The objective to minimise and its detached components (batch means)."""
        terms = self.terms(model, x, y, step=step)
        reduced = terms.per_sample.mean() if reduction == "mean" else terms.per_sample
        parts = {k: v.detach().float().mean() for k, v in terms.parts.items()}
        parts["loss"] = terms.per_sample.detach().float().mean()
        return reduced, parts

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: int) -> Terms:
        raise NotImplementedError

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, role: str) -> torch.Tensor:
        """Every training forward of a base objective goes through here (``role``: clean/adv).

        A plug-in installs ``forward_hook`` to capture auxiliary outputs or pass labels to gates.
        """
        if self.forward_hook is not None:
            return self.forward_hook(model, x, y, role)
        return model(x)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Add the method's modules to a freshly built model (none for base objectives)."""
        return model

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Called by the trainer after the backward pass, right before ``optimizer.step()`` (default: nothing).

        A method whose update is more than one step per batch takes its extra steps here (AFD's
        ``update: released``); the gradients in ``p.grad`` are the loss's, synced across ranks.
        """

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The base's training x' (adversarial bases implement it)."""
        raise NotImplementedError(f"{type(self).__name__} crafts no adversarial examples of its own")

    def head_loss(
        self, logits_clean: torch.Tensor | None, logits_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Parts]:
        """The base's per-sample loss and parts on one head's clean and adversarial logits (adversarial bases
        implement it; plug-ins apply it to auxiliary heads too)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-head loss")

    def craft(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: Any = "ce",
        x_init: torch.Tensor | None = None, targeted: bool = False, steps: int | None = None,
        step_size: float | None = None,
    ) -> torch.Tensor:
        """The training adversary: PGD with the configured settings, final iterate (no early stop).

        Runs with the model in eval mode when ``attack.bn_mode == "eval"`` (our default, see
        METHODS.md §1) and restores the previous mode afterwards, in :attr:`attack_precision`.
        ``steps`` / ``step_size`` replace the configured ones (ANCRA's negatives' own budget).
        """
        a = self.attack
        steps = a.steps if steps is None else steps
        step_size = a.step_size if step_size is None else step_size
        if steps == 0 or a.eps == 0:
            return x.detach()

        def make() -> torch.Tensor:
            with eval_mode(model, a.bn_mode == "eval"), self.attack_precision():
                return pgd(
                    model, x, y, eps=a.eps, norm=a.norm, steps=steps, step_size=step_size,
                    loss=loss, random_start=a.random_start and x_init is None, x_init=x_init,
                    targeted=targeted, early_stop=False, generator=self.generator,
                )

        return self.tape(make)

    def start_epoch(self, epoch: int) -> None:
        """Called by the loop before epoch ``epoch`` (0-based) starts; nothing by default."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint (the attack generator's state)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


class PlugIn(Method):
    """A plug-in wrapping a base objective: shares its attack, generator and craft tape, adds modules and terms.

    Subclasses implement :meth:`terms` (usually: call ``self.base.terms`` then add their own) and,
    when they add modules, :meth:`prepare_model`. They may set ``self.base.forward_hook``. Each declares
    the base objectives it wraps in ``supported_bases`` (registry names), checked by :meth:`check_base`
    on construction; one that ``stacks`` may wrap another plug-in, and is checked against the chain's base.
    """

    supported_bases: tuple[str, ...] = ()
    stacks = False

    def __init__(self, base: Method) -> None:
        super().__init__(base.attack, base.generator)
        self.base = base
        self.tape = base.tape
        self.check_base()

    def check_base(self) -> str:
        """The registry name of the wrapped base objective, or a UserError naming the supported ones."""
        plugin = type(self).__name__
        name = type(innermost(self.base) if self.stacks else self.base).__name__
        if name not in self.supported_bases:
            chains = " (and their plug-ins)" if self.stacks else ""
            raise UserError(f"method {name}+{plugin} is not supported: plug-in {plugin} supports bases "
                            f"{', '.join(self.supported_bases)}{chains}, not {name} (e.g. "
                            f"method.name={self.supported_bases[0]}+{plugin})")
        return name

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The base's modules (plug-ins that add their own call this first)."""
        return self.base.prepare_model(model)

    def start_epoch(self, epoch: int) -> None:
        self.base.start_epoch(epoch)

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.base.before_step(optimizer)

    def set_attack_precision(self, precision: Callable[[], ContextManager[Any]]) -> None:
        super().set_attack_precision(precision)
        self.base.set_attack_precision(precision)


def innermost(method: Method) -> Method:
    """The base objective at the bottom of a plug-in chain."""
    while isinstance(method, PlugIn):
        method = method.base
    return method


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample correctness as floats (for ``parts``)."""
    return (logits.argmax(1) == y).float()
