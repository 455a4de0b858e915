"""One step of a study, the same under every executor: run its ``robustlab`` command, then file its outcome.

An evaluation's record is copied to the results folder last and atomically (with the run's
``metrics.jsonl``, which the page reads for feature gaps and wall times), and its settings are filed
(:meth:`robustlab.study.plan.Study.file_settings`), so a copied record always means a finished job. An audit's
record is copied the same way, to ``RESULTS/<run>.audit.json``.
"""

from __future__ import annotations

import shlex
import time

from robustlab.atomic import atomic_write_bytes
from robustlab.errors import UserError
from robustlab.study.plan import Step, Study


class StepFailed(UserError):
    """A step's command exited non-zero (its own one-line error was printed above)."""


def execute(study: Study, step: Step, main: bool = True) -> float:
    """Run ``step`` through the CLI in this process and file its outcome (``main``: this process is rank 0 of
    the step, the one that files); returns its wall seconds."""
    from robustlab.cli import main as robustlab

    missing = [d for d in study.dependencies(step) if not study.done(d)]
    if missing:  # under SLURM afterok guarantees this; a hand-started job may not
        raise StepFailed(f"{step.key} needs {missing[0].key} finished first; run the study again to schedule it")
    command = study.command(step)
    started = time.perf_counter()
    code = robustlab(command)
    if code == 130:  # interrupted (Ctrl-C): the study stops as interrupted, resumable
        raise KeyboardInterrupt
    if code != 0:
        raise StepFailed(f"step failed: robustlab {shlex.join(command)}; fix it and rerun the study to resume")
    seconds = time.perf_counter() - started
    if not main:
        return seconds
    study.record_time(step.job, step.kind, seconds)
    if step.kind == "eval":
        job = step.job
        run = study.run_dir(job)
        atomic_write_bytes(study.metrics_copy(job), (run / "metrics.jsonl").read_bytes())
        study.file_settings(job)
        atomic_write_bytes(study.record_path(job), study.eval_out(job).read_bytes())
    elif step.kind == "audit":
        atomic_write_bytes(study.audit_path(step.job), study.audit_out(step.job).read_bytes())
    return seconds
