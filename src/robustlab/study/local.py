"""``--executor local``: every pending step in this process, one after the other, with an ETA."""

from __future__ import annotations

import shlex
from typing import Callable

from robustlab.study.plan import Step, Study
from robustlab.study.steps import execute


def eta(study: Study, remaining: list[Step], spent: dict[str, list[float]]) -> str:
    """Remaining time from this session's seconds per training epoch and per evaluation ("unknown" before
    one of a kind has run)."""
    total = 0.0
    for step in remaining:
        units = study.config(step.job).train.epochs if step.kind == "train" else 1
        seconds, done = spent[step.kind]
        if not done:
            return "unknown until a step of each kind has run"
        total += units * seconds / done
    hours, rest = divmod(int(total), 3600)
    return f"{hours}h{rest // 60:02d}m"


def run_local(study: Study, steps: list[Step], log: Callable[[str], None] = print) -> None:
    """Run ``steps`` (dependencies first, as :meth:`Study.pending` orders them) sequentially."""
    if steps:
        audits = sum(s.kind == "audit" for s in steps)
        log(f"{len(steps)} steps to do ({sum(s.kind == 'train' for s in steps)} trainings, "
            f"{sum(s.kind == 'eval' for s in steps)} evaluations{f', {audits} audits' if audits else ''}); results in "
            f"{study.results}")
    # kind -> [seconds, units (epochs | evaluations | audits)]
    spent = {"train": [0.0, 0.0], "eval": [0.0, 0.0], "audit": [0.0, 0.0]}
    for i, step in enumerate(steps):
        log(f"[{i + 1}/{len(steps)}] robustlab {shlex.join(study.command(step))}")
        seconds = execute(study, step)
        spent[step.kind][0] += seconds
        spent[step.kind][1] += study.config(step.job).train.epochs if step.kind == "train" else 1
        log(f"    done in {seconds:.0f} s; ETA {eta(study, steps[i + 1:], spent)}")
