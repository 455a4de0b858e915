"""Evaluation under ``torchrun``: ranks split the batches, verdicts are gathered (EVALUATION.md, scale).

Each rank takes a contiguous block of whole batches, so every batch keeps its global index and its
attack seeds: a sharded evaluation gives the same per-sample verdicts as a single process.
"""

from __future__ import annotations

from dataclasses import fields

import torch.distributed as dist

from robustlab.evaluate.state import AttackCost, EvalState
from robustlab.runs.ranks import Ranks


def shard_batches(n: int, batch_size: int, ranks: Ranks) -> tuple[int, int]:
    """``[first, end)`` batch indices of this rank's contiguous block."""
    batches = -(-n // batch_size)
    return batches * ranks.rank // ranks.world, batches * (ranks.rank + 1) // ranks.world


def gather_states(state: EvalState, ranks: Ranks) -> EvalState:
    """All ranks' verdicts concatenated in rank order (= sample order), costs summed."""
    if not ranks.enabled:
        return state
    parts: list[EvalState | None] = [None] * ranks.world
    dist.all_gather_object(parts, state)
    merged = EvalState.new(state.fingerprint, sum(p.n for p in parts), state.batch_size, list(state.broken_by))
    merged.clean = [v for p in parts for v in p.clean]
    merged.cursor = -(-merged.n // merged.batch_size)
    for name in merged.broken_by:
        merged.broken_by[name] = [v for p in parts for v in p.broken_by[name]]
        merged.costs[name] = AttackCost(**{
            f.name: sum(getattr(p.costs[name], f.name) for p in parts) for f in fields(AttackCost)
        })
    merged.skipped = sorted({s for p in parts for s in p.skipped})
    return merged
