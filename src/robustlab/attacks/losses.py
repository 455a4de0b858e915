"""Per-sample attack losses: each returns a tensor of shape (N,), to be *maximised* by an attack.

Attacks take the gradient of the sum, so one sample's step never depends on its neighbours or on
the batch size. Targeted variants are expressed by the caller (e.g. maximise ``-ce(logits, target)``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _full(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits (autocast) promoted to float32; float32/float64 kept as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample."""
    return F.cross_entropy(_full(logits), y, reduction="none")


def _label_mask_inf(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A tensor with +inf at each sample's label and 0 elsewhere (to exclude the label by subtraction)."""
    return torch.zeros_like(logits).scatter(1, y.unsqueeze(1), float("inf"))


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW margin ``max_{k != y} z_k - z_y``; > 0 means misclassified."""
    logits = _full(logits)
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    z_other = (logits - _label_mask_inf(logits, y)).amax(dim=1)
    return z_other - z_y


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020), untargeted, to maximise.

    ``-(z_y - max_{k != y} z_k) / (z_pi1 - z_pi3 + 1e-12)`` with z sorted decreasingly.
    """
    logits = _full(logits)
    z_sorted = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    z_other = (logits - _label_mask_inf(logits, y)).amax(dim=1)
    return -(z_y - z_other) / (z_sorted[:, 0] - z_sorted[:, 2] + 1e-12)


def dlr_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020), to maximise: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2 + 1e-12)``."""
    logits = _full(logits)
    z_sorted = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    z_t = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": ce, "margin": margin, "dlr": dlr}


def get_loss(loss: str | LossFn) -> LossFn:
    """A loss by name (``ce``, ``margin``, ``dlr``) or a callable ``(logits, y) -> (N,)`` passed through."""
    if callable(loss):
        return loss
    try:
        return LOSSES[loss]
    except KeyError:
        from robustlab.errors import UserError

        raise UserError(f"unknown attack loss {loss!r}; choose one of: {', '.join(LOSSES)}") from None
