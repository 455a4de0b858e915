"""The probe forward before any attack: outputs a robust accuracy can be computed from.

One eval-mode forward (with autograd on) of a few probe inputs must give a float tensor of shape
(N, classes) with finite entries; otherwise the evaluation is refused with one
:class:`~robustlab.errors.UserError` line, because every number it would print is meaningless (a model
with NaN logits used to score its class-prior accuracy, clean and robust alike). Whether the logits
have input gradients, and what the evaluation does when they do not, is :mod:`robustlab.evaluate.masking`'s.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks._common import eval_mode
from robustlab.errors import UserError
from robustlab.models import Normalize


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 120 characters of it), for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


def check_logit_shape(out: object, n: int) -> None:
    """Refuse a model output that is not an (n, classes) tensor, in one line."""
    if not torch.is_tensor(out) or out.ndim != 2 or out.shape[0] != n:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise UserError(f"the model returns {got} for {n} inputs; it must return logits of shape (N, classes)")


def probe_forward(model: nn.Module, x: torch.Tensor) -> None:
    """Check the logits of ``x``, refusing non-tensor, non-float and non-finite ones with one line each."""
    x_req = x.detach().clone().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        try:
            out = model(x_req)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise UserError(f"the model fails on inputs of shape {tuple(x.shape[1:])} ({one_line(exc)}); "
                            "check the data set matches the model") from None
    check_logit_shape(out, x.shape[0])
    if not out.is_floating_point():
        raise UserError(f"the model returns {out.dtype} outputs, not float logits (an argmax or rounding at the "
                        "end?); return the logits")
    bad = int((~torch.isfinite(out.detach())).any(dim=1).sum())
    if bad:
        raise UserError(f"the model returns NaN or infinite logits for {bad} of {x.shape[0]} probe inputs; "
                        "check its weights (NaN or inf entries?) and its forward")


def input_writer(model: nn.Module, x: torch.Tensor) -> str | None:
    """The innermost module whose forward wrote into the tensor it was given, when a forward of a copy of ``x``
    changes that copy (``""``: the model's own forward); None when nothing writes into the input.

    Every evaluation forward gets its own copy of the images (:mod:`robustlab.evaluate.runner`), so such a write
    cannot move the images a verdict is judged against; this only names the module, for the ``input_modified``
    flag."""
    names = {id(m): name for name, m in model.named_modules()}
    given = x.detach().clone()
    snapshots: list[torch.Tensor] = []
    writers: list[str] = []

    def before(module: nn.Module, args: tuple[object, ...]) -> None:
        snapshots.append(given.clone())

    def after(module: nn.Module, args: tuple[object, ...], out: object) -> None:
        if not torch.equal(snapshots.pop(), given) and id(module) in names:
            writers.append(names[id(module)])  # post-order: the innermost first

    handles = [h for m in model.modules()
               for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        with eval_mode(model), torch.no_grad():
            model(given)
    finally:
        for h in handles:
            h.remove()
    return writers[0] if writers else None


class Wrapper(nn.Module):
    """A model robustlab put around the user's ``model`` for the evaluation; its mode is the model's."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training


def model_name(model: nn.Module) -> str:
    """The class name of the user's network inside robustlab's wrappers (a :class:`Wrapper`, a ``Normalize`` put in
    front by ``--mean/--std``), for messages."""
    while True:
        if isinstance(model, Wrapper):
            model = model.model
        elif isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[0], Normalize):
            model = model[1]
        else:
            return type(model).__name__


class InputCopy(Wrapper):
    """``model`` given a copy of its input at every forward (autograd follows the copy), for a model that writes
    into its input (:func:`input_writer`): neither the images nor an attack's iterates move under it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.clone())
