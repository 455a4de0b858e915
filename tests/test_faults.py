"""Fault injection: kill -9 (inside writes and at seeded moments) or Ctrl-C train, finetune, eval, eval --verify and
study run, rerun, compare.

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
    return {kind: (work / kind, reference(Job(kind, source), work / kind))
            for kind in ("train", "finetune", "eval", "verify", "study")}


def _source(refs: dict[str, tuple[Path, float]]) -> Path:
    return refs["train"][0] / "run"


@pytest.mark.parametrize("kind, first_fault, seed, interrupt", [
    ("train", "checkpoint:2", 1, False),   # inside the first epoch's `last` write (after `best`)
    ("train", "metrics:3", 2, False),     # inside the first epoch record, just before its checkpoint
    ("finetune", "metrics:1", 3, False),   # inside the feature gap of the source model (epoch 0)
    ("finetune", None, 4, False),        # seeded: a delay or a site
    ("eval", "atomic:3", 5, False),      # inside a verdict-state write
    ("eval", None, 6, False),
    ("verify", "atomic:8", 7, False),  # inside the verification's state write (the suite's 3 batches × 2 made 6)
    ("verify", None, 8, True),        # Ctrl-C at seeded moments
    ("study", "checkpoint:2", 9, False),  # inside the row's first `last` checkpoint write
    ("study", None, 10, True),
])
def test_killed_runs_resume_to_the_uninterrupted_result(
    refs: dict[str, tuple[Path, float]], tmp_path: Path, kind: str, first_fault: str | None, seed: int,
    interrupt: bool,
) -> None:
    ref_folder, seconds = refs[kind]
    tally: Tally = trial(Job(kind, _source(refs)), tmp_path / "trial", ref_folder, seconds, seed,
                         first_fault=first_fault, interrupt=interrupt)
    assert tally.mismatches == [] and tally.corrupt == [] and tally.temp_files_left == 0
    if first_fault is not None:
        assert tally.kills >= 1 and tally.resumes >= 1  # the fault really landed
    if interrupt:
        assert tally.interrupts >= 1 and tally.kills == 0  # each Ctrl-C ended in exit code 130, none hung
