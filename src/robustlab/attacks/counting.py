"""Attack cost accounting: forward/backward sample counts via hooks, and a device-aware stopwatch.

Idea from adv-lib's forward counter (hooks counting samples); ours removes every hook on exit, also
when the block raises, and times CUDA work with device events instead of assuming CUDA.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


@dataclass
class PassCount:
    """Samples passed through a model: ``forward`` (every forward call, with or without grad) and
    ``backward`` (samples whose gradient w.r.t. the model input was computed)."""

    forward: int = 0
    backward: int = 0


def first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The first tensor among a forward's arguments (the input batch), or None."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


@contextlib.contextmanager
def count_passes(model: nn.Module) -> Iterator[PassCount]:
    """Count the samples going forward through ``model`` and backward to its input, inside the block.

    A forward-pre hook adds ``x.shape[0]`` for the model's first tensor argument; if that input
    requires grad, a tensor hook (one per tensor, however many forwards use it) adds ``x.shape[0]``
    each time a gradient reaches it, via ``backward()`` or ``torch.autograd.grad``. Backward passes
    that stop at the parameters (plain training steps) are not counted. All hooks are removed on exit.
    """
    count = PassCount()
    tensor_handles: list[RemovableHandle] = []
    hooked: dict[int, weakref.ref[torch.Tensor]] = {}

    def on_backward(n: int) -> Any:
        def hook(grad: torch.Tensor) -> None:
            count.backward += n

        return hook

    def on_forward(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = first_tensor(args, kwargs)
        if x is None:
            return
        n = int(x.shape[0]) if x.ndim else 1
        count.forward += n
        if x.requires_grad and torch.is_grad_enabled():
            ref = hooked.get(id(x))
            if ref is None or ref() is not x:
                tensor_handles.append(x.register_hook(on_backward(n)))
                key = id(x)
                hooked[key] = weakref.ref(x, lambda _r, k=key: hooked.pop(k, None))

    handle = model.register_forward_pre_hook(on_forward, with_kwargs=True)
    try:
        yield count
    finally:
        handle.remove()
        for h in tensor_handles:
            h.remove()
        hooked.clear()


class Stopwatch:
    """Wall time of a block: ``time.perf_counter`` on CPU, synchronised CUDA events on a CUDA device.

    ``with Stopwatch(x.device) as sw: ...`` then ``sw.seconds`` (NaN until the block has ended). On CUDA
    the time is that of the device stream between the two events, so queued asynchronous work is
    included and the exit waits for it.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.seconds: float = float("nan")
        self._t0 = 0.0
        self._events: tuple[Any, Any] | None = None

    def __enter__(self) -> "Stopwatch":
        self.seconds = float("nan")
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            self._events = (start, end)
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._events is not None:
            start, end = self._events
            with torch.cuda.device(self.device):
                end.record()
            end.synchronize()
            self.seconds = start.elapsed_time(end) / 1000.0
            self._events = None
        else:
            self.seconds = time.perf_counter() - self._t0
