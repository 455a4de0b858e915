"""Multi-process training under ``torchrun``: PyTorch's own DistributedDataParallel, nothing home-made.

``torchrun --nproc_per_node N -m robustlab train CONFIG`` sets RANK / WORLD_SIZE / LOCAL_RANK; the
trainer then joins the process group (:mod:`robustlab.runs.ranks`), gives each rank its slice of every
global batch (``data.batch_size`` is the global batch), wraps the model in DDP for the update, and
lets rank 0 alone evaluate, log and write checkpoints. Each rank draws its own attack noise.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from robustlab.errors import UserError
from robustlab.runs.ranks import Ranks


def wrap(model: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when the job has several ranks, else unchanged."""
    if not ranks.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def barrier(ranks: Ranks) -> None:
    if ranks.enabled:
        dist.barrier()


def per_rank_batch(batch_size: int, ranks: Ranks) -> int:
    """The global ``data.batch_size`` split evenly across ranks."""
    if batch_size % ranks.world:
        raise UserError(f"data.batch_size={batch_size} does not split over {ranks.world} processes; use a multiple of "
                        f"{ranks.world}")
    return batch_size // ranks.world
