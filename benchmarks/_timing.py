"""Shared benchmark helpers: one training step of a method, timed with device synchronisation."""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch

from robustlab.config import AttackConfig, MethodConfig
from robustlab.methods import create_method
from robustlab.models import create_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], None], *, warmup: int, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median and spread (max − min) of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times) - min(times)


def step_fn(model_name: str, method_name: str, *, batch_size: int, channels: int, size: int, num_classes: int,
            device: torch.device, steps: int = 10, model_options: dict | None = None,
            method_options: dict | None = None, amp: str = "none") -> Callable[[], None]:
    """A closure running one optimiser step of ``method_name`` on a fixed random batch."""
    torch.manual_seed(0)
    attack = AttackConfig(eps=8 / 255, steps=steps, step_size=2 / 255)
    method = create_method(MethodConfig(name=method_name, attack=attack, options=dict(method_options or {})),
                           torch.Generator(device=device).manual_seed(0))
    backbone = create_model(model_name, num_classes=num_classes, in_channels=channels, **(model_options or {}))
    if hasattr(method, "set_teacher"):  # AFD: a frozen copy of the pre-trained network is the teacher
        method.set_teacher(copy.deepcopy(backbone).to(device))
    model = method.prepare_model(backbone).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch_size, channels, size, size, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = method.loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.after_backward()
        optimizer.step()

    return step
