"""A straight-through surrogate of any model: the model's own forward values, gradients through the calls
and components that hide the input from autograd.

:class:`StraightThroughModel` runs the wrapped model's forward under
:class:`~robustlab.surrogate.mode.StraightThroughMode` whenever a gradient is wanted (grad enabled, an
input that requires grad); otherwise it is the model itself. Around that forward the model's
parameters are frozen, so a tensor carries a graph only when it depends on the input, and the
modules in ``identity_modules`` return their real output with the identity as backward (BPDA with
the identity, Athalye et al. 2018): the modules whose output :func:`inspect_forward` found cut from
their input by something no call-level stand-in repairs (a numpy round trip, ``torch.from_numpy``,
``inference_mode``), and those a user names (``eval --straight-through PATH``).

By hand, as advertorch's ``BPDAWrapper`` does (here without a change of state-dict keys):
``straight_through(module_or_function, stand_in=None)`` marks a component whose backward, inside the
surrogate only, is the gradient of ``stand_in`` (the identity when None); the model's own forward and
every verdict are unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from robustlab.errors import UserError
from robustlab.surrogate.mode import CallLog, StraightThroughMode, carries_graph, straight

_ACTIVE: ContextVar[CallLog | None] = ContextVar("robustlab_straight_through", default=None)
_ON: ContextVar[bool] = ContextVar("robustlab_straight_through_on", default=False)
MARKED = "robustlab.straight_through"  # the call name of a component marked by hand, in logs and records


def _first_tensor(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
    return next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)


def _bypass(out: Any, x: torch.Tensor | None, stand_in: torch.Tensor | None, call: str | None = MARKED) -> Any:
    """``out`` with the gradient of ``stand_in`` (``x`` when None) where shapes allow, else ``out`` unchanged;
    ``call``: the name logged for it (None: not logged)."""
    ref = x if stand_in is None else stand_in
    if not (_ON.get() and carries_graph(ref) and isinstance(out, torch.Tensor) and out.is_floating_point()):
        return out
    if ref.shape != out.shape:
        return out
    log = _ACTIVE.get()
    if log is not None and call is not None:
        log.add(call)
    return straight(out, ref)


def straight_through(component: Any, stand_in: Callable[..., torch.Tensor] | None = None) -> Any:
    """Mark ``component`` (an ``nn.Module``, marked in place and returned, or a function, returned wrapped) as
    non-differentiable: inside robustlab's straight-through surrogate its output gets the gradient of
    ``stand_in(x, ...)`` (the identity when None; the output must have the stand-in's shape), outside it
    nothing changes. The first tensor argument is ``x``."""
    def stand(args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor | None:
        return stand_in(*args, **kwargs) if stand_in is not None and _ON.get() else None

    if isinstance(component, nn.Module):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
            return _bypass(out, _first_tensor(args, kwargs), stand(args, kwargs))

        component.register_forward_hook(hook, with_kwargs=True)
        return component

    @functools.wraps(component)
    def marked(*args: Any, **kwargs: Any) -> Any:
        return _bypass(component(*args, **kwargs), _first_tensor(args, kwargs), stand(args, kwargs))

    return marked


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """The parameters of ``model`` without ``requires_grad`` for the block (restored after)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class StraightThroughModel(nn.Module):
    """``model``'s forward values; gradients through its hiding calls and ``identity_modules`` (module docs).

    Mode changes reach ``model`` (it is a submodule); its forward and backward passes are counted by
    hooks on ``model`` as usual.
    """

    def __init__(self, model: nn.Module, identity_modules: Sequence[str] = ()) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # so that restoring the wrapper's mode restores the model's
        self.identity_modules = tuple(identity_modules)
        found = dict(model.named_modules())
        missing = [p for p in self.identity_modules if p not in found or p == ""]
        if missing:
            known = ", ".join(p for p in list(found)[1:8]) or "none"
            raise UserError(f"--straight-through {missing[0]!r} names no submodule of the model; name one by its "
                            f"path (print(model) shows them; the first: {known})")
        self._modules_by_path = {p: found[p] for p in self.identity_modules}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad):
            return self.model(x)
        with self.active():
            return self.model(x)

    @contextlib.contextmanager
    def active(self, log: CallLog | None = None) -> Iterator[None]:
        """The surrogate's forward context: frozen parameters, identity modules, the mode (logging to ``log``)."""
        def identity(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
            return _bypass(out, _first_tensor(args, kwargs), None, call=None)  # logged by whoever found the cut

        handles = [m.register_forward_hook(identity, with_kwargs=True) for m in self._modules_by_path.values()]
        on, logging = _ON.set(True), _ACTIVE.set(log)
        try:
            with _frozen(self.model), StraightThroughMode(keep_grad=True, log=log):
                yield
        finally:
            _ON.reset(on)
            _ACTIVE.reset(logging)
            for h in handles:
                h.remove()


@dataclass
class Inspection:
    """One forward of the surrogate with everything it saw: replaced calls, numpy round trips, cut modules."""

    log: CallLog
    cut: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> {"class", "same_shape"}
    output_has_graph: bool = False


def inspect_forward(surrogate: StraightThroughModel, x: torch.Tensor) -> Inspection:
    """Run ``surrogate`` once on ``x`` (which must require grad) recording each replaced call with the module it
    happened in, and the innermost modules whose float output carries no graph although their input did."""
    names = {id(m): name for name, m in surrogate.model.named_modules()}
    stack: list[tuple[str, bool]] = []
    log = CallLog(where=lambda: next((name for name, _ in reversed(stack)), ""))
    found = Inspection(log)

    def enter(module: nn.Module, args: tuple[Any, ...]) -> None:
        stack.append((names[id(module)], carries_graph(_first_tensor(args, {}))))

    def leave(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        path, had_graph = stack.pop()
        x_in = _first_tensor(args, {})
        if had_graph and isinstance(out, torch.Tensor) and out.is_floating_point() and not out.requires_grad:
            found.cut[path] = {"class": type(module).__name__,
                               "same_shape": x_in is not None and tuple(x_in.shape) == tuple(out.shape)}

    with torch.enable_grad(), surrogate.active(log):
        modules = [m for m in surrogate.model.modules() if id(m) in names]
        handles = [h for m in modules  # registered last, so they see the output after the identity hooks
                   for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
        try:
            out = surrogate.model(x)
        finally:
            for h in handles:
                h.remove()
    found.output_has_graph = carries_graph(out)
    found.cut = {p: v for p, v in found.cut.items()
                 if not any(q != p and (p == "" or q.startswith(p + ".")) for q in found.cut)}
    return found
