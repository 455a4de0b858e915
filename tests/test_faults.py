"""Fault injection: kill -9 train, finetune and eval (inside writes and at seeded moments), rerun, compare.

A handful of trials here; ``benchmarks/fault_trials.py --trials N`` runs as many as asked. The engine
and the comparison are in ``tests/helpers/faults.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faults import Job, Tally, reference, trial


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, float]]:
    work = tmp_path_factory.mktemp("refs")
    source = work / "train" / "run"
    return {kind: (work / kind, reference(Job(kind, source), work / kind)) for kind in ("train", "finetune", "eval")}


def _source(refs: dict[str, tuple[Path, float]]) -> Path:
    return refs["train"][0] / "run"


@pytest.mark.parametrize("kind, first_fault, seed", [
    ("train", "checkpoint:2", 1),   # inside the first epoch's `last` write (after `best`)
    ("train", "metrics:3", 2),      # inside the first epoch record, just before its checkpoint
    ("finetune", "metrics:1", 3),   # inside the feature gap of the source model (epoch 0)
    ("finetune", None, 4),          # seeded: a delay or a site
    ("eval", "atomic:3", 5),        # inside a verdict-state write
    ("eval", None, 6),
])
def test_killed_runs_resume_to_the_uninterrupted_result(
    refs: dict[str, tuple[Path, float]], tmp_path: Path, kind: str, first_fault: str | None, seed: int
) -> None:
    ref_folder, seconds = refs[kind]
    tally: Tally = trial(Job(kind, _source(refs)), tmp_path, ref_folder, seconds, seed, first_fault=first_fault)
    assert tally.mismatches == [] and tally.corrupt == [] and tally.temp_files_left == 0
    if first_fault is not None:
        assert tally.kills >= 1 and tally.resumes >= 1  # the fault really landed
