"""Catastrophic-overfitting watch for the per-epoch evaluation.

Catastrophic overfitting (Wong et al., ICLR 2020, §5): during single-step adversarial training the
model suddenly stops being robust to multi-step attacks (PGD accuracy falls to near 0 within an
epoch) while it becomes *more* robust to the single-step attack it trains against (FGSM accuracy
rises, often above the clean accuracy).

Rule [ours; the papers describe the phenomenon, not a test]: an evaluated epoch is flagged when

- its PGD accuracy is at most ``COLLAPSE_RATIO`` (0.5) × the best PGD accuracy of the earlier
  evaluated epochs, and at least ``MIN_DROP`` (0.1) below it (so noise near chance is not flagged), and
- its FGSM accuracy is higher than at the previous evaluated epoch.

The watch's state (best PGD accuracy so far, previous FGSM accuracy) is a small dict kept in the
training checkpoint, so a resumed run judges the same way.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from robustlab.runs.ranks import Ranks

COLLAPSE_RATIO = 0.5
MIN_DROP = 0.1


class OverfitWatch:
    """Feed it each evaluated epoch's record; :meth:`update` says whether that epoch overfit."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.best_robust: float | None = state.get("best_robust")
        self.last_fgsm: float | None = state.get("last_fgsm")

    def state_dict(self) -> dict[str, Any]:
        return {"best_robust": self.best_robust, "last_fgsm": self.last_fgsm}

    def update(self, record: dict[str, Any]) -> bool:
        """True when ``record`` (``robust_acc``, ``fgsm_acc``) is a collapse; an overfit epoch does
        not raise the best PGD accuracy, so later epochs are compared with the last good one."""
        robust, fgsm = record.get("robust_acc"), record.get("fgsm_acc")
        if robust is None or fgsm is None or math.isnan(robust) or math.isnan(fgsm):
            return False
        best, previous = self.best_robust, self.last_fgsm
        collapsed = best is not None and robust <= COLLAPSE_RATIO * best and best - robust >= MIN_DROP
        flagged = collapsed and previous is not None and fgsm > previous
        self.last_fgsm = fgsm
        if not flagged:
            self.best_robust = robust if best is None else max(best, robust)
        return flagged


def describe(record: dict[str, Any], watch: OverfitWatch) -> str:
    """One line for the log about a flagged epoch."""
    return (
        f"catastrophic overfitting at epoch {record['epoch']}: PGD accuracy {record['robust_acc']:.4f} "
        f"(best before {watch.best_robust:.4f}) while FGSM accuracy rose to {record['fgsm_acc']:.4f}"
    )


def agree(ranks: Ranks, flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (the watch runs on rank 0 only)."""
    if ranks.world == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())
