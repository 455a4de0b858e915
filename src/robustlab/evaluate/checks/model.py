"""Checks of the model itself (EVALUATION.md checks 1, 2 and 6): randomness, input gradients, probability outputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks._common import eval_mode
from robustlab.evaluate.checks.common import (
    DOC,
    GRADIENT_THRESHOLD,
    PROBABILITY_TOLERANCE,
    RANDOMNESS_TOLERANCE,
    flag_above,
    fraction_true,
    pct,
)
from robustlab.evaluate.flags import Flag


def logit_change(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Two eval-mode forwards of ``x``: the first logits and the largest change between the two,
    relative to ``max(1, max |logit|)`` (NaN at the same place in both counts as equal; NaN against a
    number counts as an infinite change)."""
    with eval_mode(model), torch.no_grad():
        a = model(x)
        b = model(x)
    if a.numel() == 0:
        return a, 0.0
    af, bf = a.float(), b.float()
    diff = (af - bf).abs()
    diff = torch.where(af.isnan() & bf.isnan(), torch.zeros_like(diff), diff)
    diff = torch.nan_to_num(diff, nan=math.inf)
    scale = max(1.0, float(torch.nan_to_num(af.abs(), nan=0.0, posinf=0.0).max()))
    return a, float(diff.max()) / scale


def randomness_flag(change: float, tolerance: float) -> Flag | None:
    message = (f"two eval-mode forwards of the same batch gave different logits (largest change {change:.3g}, relative "
               "to the logit scale): the model is randomized or stateful, so a single attack run under-estimates its "
               f"weakness; remove the randomness for evaluation or attack its expectation ({DOC} 1)")
    return flag_above(tolerance, "randomness", message, change)


def check_randomness(model: nn.Module, x: torch.Tensor, *, tolerance: float = RANDOMNESS_TOLERANCE) -> Flag | None:
    """Check 1: two eval-mode forwards of the same batch must give the same logits.

    ``tolerance`` (default 1e-5) bounds the largest absolute logit change divided by
    ``max(1, max |logit|)``: zero for a deterministic model on the CPU, and far above the rounding
    differences a GPU kernel could produce, far below any randomized defense. Flag value: that change.
    """
    _, change = logit_change(model, x)
    return randomness_flag(change, tolerance)


def masked_gradient_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of samples whose input gradient of the cross-entropy is all zero or has a non-finite entry."""
    if x.shape[0] == 0:
        return 0.0
    x_req = x.detach().clone().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        logits = model(x_req)
        loss = F.cross_entropy(logits.float(), y, reduction="none").sum()
        if not loss.requires_grad:  # the output is cut off from the input (no_grad, detach, a constant)
            return 1.0
        (grad,) = torch.autograd.grad(loss, x_req, allow_unused=True)
    if grad is None:
        return 1.0
    flat = grad.flatten(1)
    bad = (flat == 0).all(dim=1) | ~torch.isfinite(flat).all(dim=1)
    return fraction_true(bad)


def gradient_flag(fraction: float, threshold: float) -> Flag | None:
    message = (f"{pct(fraction)} of samples have an all-zero or non-finite input gradient of the cross-entropy: "
               "gradient attacks cannot move them and their robust accuracy is not trustworthy; look for "
               "non-differentiable steps (rounding, thresholds, JPEG) or a saturated softmax, and use a "
               f"black-box or straight-through attack ({DOC} 2)")
    return flag_above(threshold, "zero_gradients", message, fraction)


def check_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, threshold: float = GRADIENT_THRESHOLD
) -> Flag | None:
    """Check 2: fraction of samples whose CE input gradient (eval mode, at the clean input) is all
    zero or has a NaN/inf entry. Flagged above ``threshold`` (default 0: any such sample, as
    EVALUATION.md asks; a working ReLU network has a non-zero gradient at every input unless its
    softmax saturates, which is itself a form of masking). Flag value: the fraction."""
    return gradient_flag(masked_gradient_fraction(model, x, y), threshold)


def check_probability_outputs(logits: torch.Tensor, *, tolerance: float = PROBABILITY_TOLERANCE) -> Flag | None:
    """Check 6: every row non-negative and summing to 1 within ``tolerance`` (default 1e-3, loose
    enough for half-precision softmax; real logits never satisfy this on a whole batch). Attacks take
    a log-softmax of what the model returns, so probabilities squash the loss and mislead CE/DLR
    attacks. Log-probabilities are not flagged: they differ from logits by a per-row constant, which
    the losses ignore. Flag value: the largest deviation of a row sum from 1."""
    if logits.ndim != 2 or logits.shape[0] == 0:
        return None
    z = logits.detach().float()
    if not bool(torch.isfinite(z).all()) or bool((z < 0).any()):
        return None
    deviation = float((z.sum(dim=1) - 1).abs().max())
    if deviation > tolerance:
        return None
    return Flag(
        "probabilities",
        "the model returns probabilities, not logits (every output row is non-negative and sums to 1): "
        f"attacks on CE/DLR losses are misled; return logits ({DOC} 6)",
        deviation,
    )
