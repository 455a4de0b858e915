"""Training precision, both kinds: the update's (``train.amp``) and the training attack's (``train.attack_amp``).

``train.amp`` (:func:`update_autocast`): ``none``, ``bf16`` or ``fp16`` (CUDA only, with a gradient
scaler) autocast around the whole ``method.loss`` call. The official codes of PGD-AT, TRADES, MART, FSR and
ANCRA craft x' in fp32; ``train.amp: bf16`` wraps the whole ``method.loss`` call (attack included) in
autocast. ``train.attack_amp`` decides the
attack's own precision inside that call: ``fp32`` (default) switches autocast off for the attack,
``bf16`` / ``fp16`` run it under autocast of that type (fp16 on CUDA only).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch

from robustlab.errors import UserError


def attack_autocast(name: str, device: torch.device) -> Callable[[], ContextManager[Any]]:
    """A factory of the context the training attack runs in, for ``train.attack_amp`` = ``name``."""
    if name == "fp32":
        return lambda: torch.autocast(device.type, enabled=False)
    if name == "fp16" and device.type != "cuda":
        raise UserError("train.attack_amp=fp16 needs a CUDA device; use train.attack_amp=bf16 or fp32")
    dtype = torch.bfloat16 if name == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def update_autocast(
    amp: str, device: torch.device,
) -> tuple[Callable[[], ContextManager[Any]], torch.amp.GradScaler | None]:
    """The context factory the training step runs in for ``train.amp`` = ``amp``, and its gradient scaler
    (fp16 only)."""
    if amp == "none":
        return contextlib.nullcontext, None
    if amp == "fp16" and device.type != "cuda":
        raise UserError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 or none")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler
