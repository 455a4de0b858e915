"""Shared benchmark helpers: one training step of a method, timed with device synchronisation."""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

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


def make_step(model_name: str, method_name: str, *, batch_size: int, channels: int, size: int, num_classes: int,
              device: torch.device, steps: int = 10, model_options: dict | None = None,
              method_options: dict | None = None, amp: str = "none", channels_last: bool = False,
              compile_backend: str | None = None,
              batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[Callable[[], None], nn.Module]:
    """A closure running one optimiser step of ``method_name`` on a fixed batch, and the model it trains.

    The batch is random unless ``batch`` is given. ``channels_last``: model and batch in NHWC memory
    format; ``compile_backend``: the step calls ``torch.compile(model, backend=...)`` instead of the model.
    """
    torch.manual_seed(0)
    attack = AttackConfig(eps=8 / 255, steps=steps, step_size=2 / 255)
    method = create_method(MethodConfig(name=method_name, attack=attack, options=dict(method_options or {})),
                           torch.Generator(device=device).manual_seed(0))
    backbone = create_model(model_name, num_classes=num_classes, in_channels=channels, **(model_options or {}))
    if hasattr(method, "set_teacher"):  # AFD: a frozen copy of the pre-trained network is the teacher
        method.set_teacher(copy.deepcopy(backbone).to(device))
    model = method.prepare_model(backbone).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if batch is None:
        batch = (torch.rand(batch_size, channels, size, size), torch.randint(0, num_classes, (batch_size,)))
    x, y = batch[0].to(device), batch[1].to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model, backend=compile_backend) if compile_backend else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = method.loss(forward, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.before_step(optimizer)
        optimizer.step()

    return step, model


def step_fn(*args: Any, **kwargs: Any) -> Callable[[], None]:
    """:func:`make_step` without the model."""
    return make_step(*args, **kwargs)[0]
