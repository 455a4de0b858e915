"""A kill switch for fault-injection trials: ``ROBUSTLAB_FAULT=<site>:<n>`` SIGKILLs the process at the
n-th pass through ``site`` (``checkpoint``, ``atomic``, ``metrics``), i.e. inside that write.

Unset (always, outside ``tests/test_faults.py`` and ``benchmarks/fault_trials.py``) it costs one
environment lookup per write. The writers call :func:`fault_point` between the two halves of their
data, so a kill there leaves exactly what a crash mid-write leaves: a torn temp file, or a torn last
line of ``metrics.jsonl``.
"""

from __future__ import annotations

import os
import signal
from typing import IO

ENV = "ROBUSTLAB_FAULT"
_passes: dict[str, int] = {}


def fault_point(site: str, fh: IO | None = None) -> None:
    """Die by SIGKILL here when ``ROBUSTLAB_FAULT`` names this site and pass (``fh`` is flushed first)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != site:
        return
    _passes[site] = _passes.get(site, 0) + 1
    if str(_passes[site]) == count.strip():
        if fh is not None:
            fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
