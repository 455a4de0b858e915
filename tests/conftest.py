"""Shared pytest set-up: seeded, single-threaded-friendly, src on the path when not installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
TESTS = Path(__file__).resolve().parent / "helpers"  # the shared helpers (tiny_runs, outside, faults, ...)
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Every test model is tiny: one thread avoids OpenMP spin-waiting, which on a loaded 2-core
    machine made small convolutions 100× slower. Benchmarks, not tests, measure multi-threaded speed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
