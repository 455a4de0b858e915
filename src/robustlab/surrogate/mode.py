"""The calls that hide an attack's input from autograd, replaced in the forward by straight-through versions.

A :class:`StraightThroughMode` (a ``torch.overrides.TorchFunctionMode``, so it sees these calls in any
model's forward without a change to its code) returns, for each call below that touches a tensor
carrying the attack's graph, the call's own values with the gradient of a differentiable stand-in
(BPDA, Athalye, Carlini & Wagner, ICML 2018; the identity stand-in is their straight-through case).
Values never change: :func:`straight` returns a copy of the real output and replaces only the
backward, so a model's logits under the mode equal its logits without it.

What is replaced, and by which stand-in (autograd's own derivative of each call, from PyTorch's
``tools/autograd/derivatives.yaml``, in brackets):

* ``detach`` / ``detach_`` / ``.data`` [no gradient]: the identity.
* ``round`` (also with ``decimals``), ``floor``, ``ceil``, ``trunc``, ``fix``, ``sign``, ``sgn`` [zero]
  and their in-place forms: the identity; ``floor_divide`` / ``//`` and ``div(..., rounding_mode=...)``
  [zero]: true division; ``frac``, ``remainder`` / ``%``, ``fmod`` [1 to the dividend]: no gradient, so
  that quantisation written as ``x - x % q`` or ``x - frac(x)`` passes the identity, as ``floor`` does.
* ``where(cond, a, b)``, ``masked_fill``, ``x[index] = c`` whose kept branch is a constant [zero where
  the constant is kept]: the identity to the branch that carries the graph (the identity backward
  RobustBench's MeanSparse variants write by hand).
* calls whose output cannot carry a gradient (an integer or boolean cast, a comparison,
  ``bucketize``: any call returning a non-float tensor of its float input's shape) [none]: the output
  is *tagged* with a stand-in, the input it came from; a later call that reads tagged tensors and no
  other graph (a cast back to float, ``/ 255``) returns its real output with the gradient of the same
  call on the stand-ins. ``argmax`` / ``argmin`` tag their indices with the scores, so that
  ``one_hot(argmax(s))`` gets the identity to ``s``.
* ``torch.no_grad`` / ``set_grad_enabled(False)`` inside the forward: ignored (the grad mode changes
  no value), so the ops of such a region give their true gradient.

Seen but not repairable by a stand-in: ``Tensor.numpy`` / ``__array__`` (run on a detached tensor so the
forward still works, and logged as a numpy round trip). The mode does not see ``torch.from_numpy`` or
``inference_mode``: :mod:`robustlab.surrogate.model` finds the module whose output such a step cuts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

Tensor = torch.Tensor
_TAG = "_robustlab_stand_in"
SKIP = object()  # a rule's answer when the call does not touch the graph: run it as is


class _Straight(torch.autograd.Function):
    """``real``'s values, ``stand_in``'s gradient (the incoming gradient passed to it unchanged)."""

    @staticmethod
    def forward(ctx: Any, real: Tensor, stand_in: Tensor) -> Tensor:
        return real.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:
        return None, grad


def carries_graph(value: object) -> bool:
    """A float tensor that requires grad (inside the surrogate's forward: one that depends on the input)."""
    return isinstance(value, Tensor) and value.requires_grad and value.is_floating_point()


def straight(real: Tensor, stand_in: Tensor) -> Tensor:
    """``real``'s values (a copy) with the gradient of ``stand_in`` (broadcast to ``real``'s shape)."""
    if stand_in.shape != real.shape:
        stand_in = stand_in.expand(real.shape)
    return _Straight.apply(real.detach(), stand_in)


@dataclass(frozen=True)
class Tag:
    """What a tensor that cannot carry a gradient stands for: a float ``stand_in`` and the ``call`` that made it."""

    stand_in: Tensor
    call: str


def tag_of(value: object) -> Tag | None:
    return getattr(value, _TAG, None) if isinstance(value, Tensor) else None


def _tagged(out: Tensor, tag: Tag) -> Tensor:
    setattr(out, _TAG, tag)
    return out


def call_name(func: Any) -> str:
    """How the record names a call: ``Tensor.round``, ``torch.round``, ``F.one_hot``."""
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    head, _, name = qual.rpartition(".")
    if head in ("TensorBase", "Tensor"):
        return f"Tensor.{name}"
    if func is torch.nn.functional.one_hot:
        return "F.one_hot"
    return f"torch.{name or qual}"


def _flat(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for v in (*args, *kwargs.values()):
        out.extend(v if isinstance(v, (list, tuple)) else (v,))
    return out


def _first(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("input")


def _stand_ins(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_stand_ins(v) for v in value)
    tag = tag_of(value)
    return value if tag is None else tag.stand_in


Rule = Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]


def identity_rule(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The call's values, the identity's gradient to its first argument."""
    x = _first(args, kwargs)
    return straight(func(*args, **kwargs), x) if carries_graph(x) else SKIP


def _no_gradient_rule(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    x = _first(args, kwargs)
    if not carries_graph(x) or any(carries_graph(v) for v in _flat(args[1:], kwargs)):
        return SKIP
    return func(*args, **kwargs).detach()


def _division_rule(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if func in (Tensor.div, torch.div, Tensor.divide, torch.divide) and kwargs.get("rounding_mode") is None:
        return SKIP
    if not any(carries_graph(v) for v in _flat(args, kwargs)):
        return SKIP
    a, b = args[0], args[1] if len(args) > 1 else kwargs["other"]
    if func is Tensor.__rfloordiv__:
        a, b = b, a
    return straight(func(*args, **kwargs), torch.true_divide(a, b))


def _where_rule(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if len(args) < 3:
        return SKIP
    branches = (args[0], args[2]) if func is Tensor.where else (args[1], args[2])  # x.where(cond, y)
    moving = [b for b in branches if carries_graph(b)]
    return straight(func(*args, **kwargs), moving[0]) if len(moving) == 1 else SKIP


def _masked_fill_rule(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    value = args[2] if len(args) > 2 else kwargs.get("value")
    return SKIP if carries_graph(value) else identity_rule(func, args, kwargs)


def _in_place(out_of_place: Any, rule: Rule) -> Rule:
    """The in-place form of ``rule``: its straight-through value copied into the tensor (autograd follows the
    copy, so the gradient reaches the tensor's old value through the stand-in)."""

    def in_place(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        new = rule(out_of_place, args, kwargs)
        return SKIP if new is SKIP else args[0].copy_(new)

    return in_place


def _setitem_rule(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    x, index, value = args
    if not carries_graph(x) or carries_graph(value):
        return SKIP
    real = x.detach().clone()
    real[index] = value
    x.copy_(straight(real, x))
    return None


def _detach_in_place(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if carries_graph(args[0]) else SKIP


def _numpy_rule(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    return func(x.detach(), *args[1:], **kwargs) if x.requires_grad else SKIP


def _index_rule(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    x = _first(args, kwargs)
    if not carries_graph(x):
        return SKIP
    return _tagged(func(*args, **kwargs), Tag(x, call_name(func)))  # read only by one_hot, after a shape check


def _one_hot_rule(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    tag = tag_of(_first(args, kwargs))
    if tag is None:
        return SKIP
    out = func(*args, **kwargs)
    return _tagged(out, Tag(tag.stand_in, f"{tag.call} -> F.one_hot")) if out.shape == tag.stand_in.shape else out


_ROUNDING = ("round", "floor", "ceil", "trunc", "fix", "sign", "sgn")
_NO_GRADIENT = ("frac", "remainder", "fmod")


def _rules() -> dict[Any, Rule]:
    rules: dict[Any, Rule] = {Tensor.detach: identity_rule, torch.detach: identity_rule,
                              Tensor.detach_: _detach_in_place}
    for op in _ROUNDING:
        rules[getattr(Tensor, op)] = rules[getattr(torch, op)] = identity_rule
        rules[getattr(Tensor, f"{op}_")] = _in_place(getattr(torch, op), identity_rule)
    for op in _NO_GRADIENT:
        rules[getattr(Tensor, op)] = rules[getattr(torch, op)] = _no_gradient_rule
    rules[Tensor.__mod__] = _no_gradient_rule
    for f in (Tensor.floor_divide, torch.floor_divide, Tensor.__floordiv__, Tensor.__rfloordiv__,
              Tensor.div, torch.div, Tensor.divide, torch.divide):
        rules[f] = _division_rule
    rules[torch.where] = rules[Tensor.where] = _where_rule
    rules[Tensor.masked_fill] = rules[torch.masked_fill] = _masked_fill_rule
    rules[Tensor.masked_fill_] = _in_place(torch.masked_fill, _masked_fill_rule)
    rules[Tensor.__setitem__] = _setitem_rule
    rules[Tensor.numpy] = rules[Tensor.__array__] = _numpy_rule
    rules[Tensor.argmax] = rules[torch.argmax] = rules[Tensor.argmin] = rules[torch.argmin] = _index_rule
    rules[torch.nn.functional.one_hot] = _one_hot_rule
    return rules


RULES = _rules()
DATA = torch._C.TensorBase.__dict__["data"]  # ``x.data`` reaches the mode as this descriptor's ``__get__``
# calls that cut the graph and are only made to run here (their module is found and given the identity)
NUMPY = (Tensor.numpy, Tensor.__array__)
# logged where their tag is used, if ever
SILENT = (Tensor.argmax, torch.argmax, Tensor.argmin, torch.argmin, torch.nn.functional.one_hot)


@dataclass
class CallLog:
    """The calls one forward replaced: ``{(call, module path): count}``, and the numpy round trips it saw."""

    where: Callable[[], str] = lambda: ""
    replaced: dict[tuple[str, str], int] = field(default_factory=dict)
    numpy: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, call: str, numpy: bool = False) -> None:
        book = self.numpy if numpy else self.replaced
        key = (call, self.where())
        book[key] = book.get(key, 0) + 1


class StraightThroughMode(TorchFunctionMode):
    """Replace, in the forward only, the calls of :data:`RULES` that touch the input's graph (module docs).

    ``keep_grad``: ignore ``set_grad_enabled(False)`` inside the block (a ``torch.no_grad`` region of the
    forward stays differentiable); for a block entered with grad enabled. ``log``: record each replaced call.
    """

    def __init__(self, *, keep_grad: bool, log: CallLog | None = None) -> None:
        super().__init__()
        self.keep_grad, self.log = keep_grad, log

    def _note(self, call: str, numpy: bool = False) -> None:
        if self.log is not None:
            self.log.add(call, numpy)

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch._C._set_grad_enabled:
            if self.keep_grad and args and not args[0] and torch.is_grad_enabled():
                self._note("torch.no_grad")
                return None
            return func(*args, **kwargs)
        rule = identity_rule if getattr(func, "__self__", None) is DATA else RULES.get(func)
        if rule is not None:
            out = rule(func, args, kwargs)
            if out is SKIP:
                return func(*args, **kwargs)
            if func not in SILENT:
                self._note("Tensor.data" if rule is identity_rule and func not in RULES else call_name(func),
                           func in NUMPY)
            return out
        if any(tag_of(v) is not None for v in _flat(args, kwargs)):
            return self._consume(func, types, args, kwargs)
        out = func(*args, **kwargs)
        if isinstance(out, Tensor) and not out.is_floating_point():
            source = next((v for v in _flat(args, kwargs) if carries_graph(v) and v.shape == out.shape), None)
            if source is not None:  # an elementwise cast or comparison: logged where the tag is used
                return _tagged(out, Tag(source, call_name(func)))
        return out

    def _consume(self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A call on tagged tensors (and no other graph): its real output with the gradient of the same call on
        their stand-ins; an output that cannot carry a gradient is tagged with that call's output instead."""
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        in_place = name.endswith("_") and not name.startswith("__")
        if not isinstance(out, Tensor) or in_place or any(carries_graph(v) for v in _flat(args, kwargs)):
            return out
        tag = next(t for t in map(tag_of, _flat(args, kwargs)) if t is not None)
        try:
            surrogate = self.__torch_function__(func, types, _stand_ins(args),
                                                {k: _stand_ins(v) for k, v in kwargs.items()})
        except (RuntimeError, TypeError, ValueError, IndexError):
            return out
        if not isinstance(surrogate, Tensor) or surrogate.shape != out.shape:
            return out
        if carries_graph(surrogate):
            if out.is_floating_point():
                self._note(tag.call)
                return straight(out, surrogate)
            return _tagged(out, Tag(surrogate, tag.call))
        inner = tag_of(surrogate)
        return out if inner is None else _tagged(out, inner)
