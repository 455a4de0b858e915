"""Evaluation progress a user can see: a bar on a terminal, a line at most every 30 s otherwise.

Work is counted in sample-attacks (each suite entry on each sample is one). The runner calls
:meth:`Progress.begin` before an attack of a batch, :meth:`Progress.name` before a group member and
:meth:`Progress.advance` after a suite entry of a batch; :meth:`Progress.watch` makes every forward of the model a
heartbeat, so a line appears even while one long attack of one batch runs (a 48-minute AutoAttack batch used to
run silent). When the stream is not a terminal a heartbeat prints
``eval: ATTACK on batch B/N: K of M sample-attacks left, elapsed H:MM:SS, ETA H:MM:SS`` when
:data:`PIPE_INTERVAL_S` seconds have passed since the last line; ETA is the elapsed time per
sample-attack finished in this process times those left (``unknown`` before the first finishes).
"""

from __future__ import annotations

import datetime
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

from torch import nn
from tqdm import tqdm

PIPE_INTERVAL_S = 30.0  # most frequent progress line when the output is not a terminal (the bound)


def _clock_text(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """Progress of ``total`` sample-attacks, ``done`` of them finished before this process started."""

    def __init__(self, total: int, *, done: int = 0, stream: TextIO | None = None,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.interval = PIPE_INTERVAL_S if interval is None else interval
        self.clock = clock
        self.total, self.done, self.done_here = total, done, 0
        self.started = self.last = clock()
        self.attack, self.where = "", ""
        self.bar = (tqdm(total=total, initial=done, unit="sample-attack", file=self.stream, leave=False,
                         dynamic_ncols=True)
                    if _is_terminal(self.stream) else None)

    def begin(self, attack: str, batch: int, batches: int) -> None:
        """An attack starts on batch ``batch`` (0-based) of ``batches``."""
        self.where = f"batch {batch + 1}/{batches}"
        self.name(attack)

    def name(self, attack: str) -> None:
        """The attack (or ``group/member``) now running."""
        self.attack = attack
        if self.bar is not None:
            self.bar.set_description_str(f"{attack} on {self.where}", refresh=False)
        self.heartbeat()

    def advance(self, samples: int) -> None:
        """A suite entry finished on ``samples`` samples."""
        self.done += samples
        self.done_here += samples
        if self.bar is not None:
            self.bar.update(samples)
        self.heartbeat()

    def heartbeat(self) -> None:
        """Print a line when the output is not a terminal and :attr:`interval` seconds have passed."""
        now = self.clock()
        if self.bar is not None or now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.started
        left = self.total - self.done
        eta = _clock_text(elapsed / self.done_here * left) if self.done_here else "unknown"
        print(f"eval: {self.attack} on {self.where}: {left:,} of {self.total:,} sample-attacks left, elapsed "
              f"{_clock_text(elapsed)}, ETA {eta}",
              file=self.stream, flush=True)

    @contextmanager
    def watch(self, model: nn.Module) -> Iterator[None]:
        """Every forward of ``model`` inside the block is a :meth:`heartbeat`."""
        handle = model.register_forward_pre_hook(lambda *_: self.heartbeat())
        try:
            yield
        finally:
            handle.remove()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
