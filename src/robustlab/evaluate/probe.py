"""The probe forward before any attack: outputs a robust accuracy can be computed from, and whether gradients exist.

One eval-mode forward (with autograd on) of a few probe inputs must give a float tensor of shape
(N, classes) with finite entries; otherwise the evaluation is refused with one
:class:`~robustlab.errors.UserError` line, because every number it would print is meaningless (a model
with NaN logits used to score its class-prior accuracy, clean and robust alike). A model whose output
does not depend on its input in the autograd graph (detached logits, ``torch.no_grad`` inside the
forward, a constant) is *gradient-free*: gradient attacks would crash or, worse, do nothing, so
:func:`gradient_free_suite` keeps only the gradient-free attack (Square) and returns the
``zero_gradients`` flag of check 2 (docs/EVALUATION.md).

Deviation: a model whose logits depend on the input only for some samples is not gradient-free here;
check 2 flags it from the measured fraction.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks._common import eval_mode
from robustlab.errors import UserError
from robustlab.evaluate.flags import Flag
from robustlab.evaluate.suite import parse_attack_name

GRADIENT_FREE = ("square",)  # attacks that only query the model's outputs


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 120 characters of it), for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120]}" if text else type(exc).__name__


def check_logit_shape(out: object, n: int) -> None:
    """Refuse a model output that is not an (n, classes) tensor, in one line."""
    if not torch.is_tensor(out) or out.ndim != 2 or out.shape[0] != n:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise UserError(f"the model returns {got} for {n} inputs; it must return logits of shape (N, classes)")


def probe_forward(model: nn.Module, x: torch.Tensor) -> bool:
    """Check the logits of ``x`` (refusing non-tensor, non-float, non-finite ones); True when they carry no input
    gradient."""
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
        if not out.requires_grad:
            return True
        (grad,) = torch.autograd.grad(out.float().sum(), x_req, allow_unused=True)
    return grad is None


def gradient_free_suite(attacks: list[str]) -> tuple[list[str], Flag]:
    """``attacks`` reduced to gradient-free ones (``square`` added when none is left), with the flag saying so."""
    kept = [a for a in attacks if parse_attack_name(a)[0] in GRADIENT_FREE]
    dropped = [a for a in attacks if a not in kept]
    chosen = kept or list(GRADIENT_FREE)
    return chosen, Flag(
        "zero_gradients",
        f"the model's output does not depend on its input in the autograd graph (detached or computed without "
        f"gradients), so gradient attacks cannot run: {', '.join(dropped) or 'none'} skipped, "
        f"{', '.join(chosen)} ran instead, and the automatic checks were skipped; evaluate a differentiable "
        "version of the model for a gradient-attack number (docs/EVALUATION.md, check 2)",
        1.0,
    )
