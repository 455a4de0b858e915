"""Where a process runs: its device and its place in a ``torchrun`` job.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`join` enters the process group (NCCL on
GPUs, gloo on CPU) and :func:`leave` tears it down. Training and evaluation both use these; the
DDP-only helpers of training stay in :mod:`robustlab.train.distributed`.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

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
        return Ranks(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; launch with torchrun") from None


DEVICE_TYPES = ("cpu", "cuda")  # what the loops and attacks are written and tested for


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else must be an available ``cpu`` or ``cuda[:N]``.

    ``key`` names the setting in messages (``train.device`` for a config, ``--device`` for ``robustlab eval``).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise UserError(f"{key} {name!r} is not a supported device; use auto, cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} asks for CUDA but none is available; use {key}{'=' if '.' in key else ' '}cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"{key} {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0 or "
                        "auto")
    return torch.device("cpu") if device.type == "cpu" else device  # cpu:N is the one CPU


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


def leave() -> None:
    """Leave the process group cleanly: free dead DDP wrappers, wait for every rank, then tear down.

    Without the barrier a rank that exits first can tear gloo's connections down under a peer still
    finishing its last collective, which then aborts ("terminate called without an active exception").
    A DDP wrapper holds the group, so one still alive at exit (referenced, or in a reference cycle)
    keeps the group's C++ object until interpreter finalization. A minimal two-rank gloo job that kept
    its wrappers aborted that way in 2 of 55 exits; the one traced (faulthandler) had no Python frame
    left, i.e. it died in finalization. Collecting here frees the wrappers in cycles, so the group dies in
    ``destroy_process_group`` while every rank is still connected; callers drop their own references first.
    """
    if dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
