"""Multi-process training under ``torchrun``: PyTorch's own DistributedDataParallel, nothing home-made.

``torchrun --nproc_per_node N -m robustlab train CONFIG`` sets RANK / WORLD_SIZE / LOCAL_RANK; the
trainer then joins the process group (NCCL on GPUs, gloo on CPU), gives each rank its slice of every
global batch (``data.batch_size`` is the global batch), wraps the model in DDP for the update, and
lets rank 0 alone evaluate, log and write checkpoints. Each rank draws its own attack noise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from robustlab.errors import UserError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def ranks_from_env() -> Ranks:
    """Ranks as ``torchrun`` sets them in the environment."""
    try:
        return Ranks(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; launch with torchrun") from None


def join(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (once) and return this rank's device (``cuda:LOCAL_RANK`` on GPUs)."""
    if not ranks.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def wrap(model: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when the job has several ranks, else unchanged."""
    if not ranks.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def leave() -> None:
    """Leave the process group cleanly: wait for every rank, then tear down.

    Without the barrier a rank that exits first can tear gloo's connections down under a peer still
    finishing its last collective, which then aborts ("terminate called without an active exception").
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    if ranks.enabled:
        dist.barrier()


def per_rank_batch(batch_size: int, ranks: Ranks) -> int:
    """The global ``data.batch_size`` split evenly across ranks."""
    if batch_size % ranks.world:
        raise UserError(f"data.batch_size={batch_size} does not split over {ranks.world} processes; use a multiple of {ranks.world}")
    return batch_size // ranks.world
