"""What one SLURM job of a study runs; imported only by the job itself and by ``--executor slurm``.

A :class:`submitit.helpers.Checkpointable`, so a job preempted or timed out under SLURM is requeued by
submitit with the same arguments; the step then resumes from its run folder (training and evaluation
resume themselves).
"""

from __future__ import annotations

import submitit

from robustlab.study.plan import Step, Study
from robustlab.study.steps import execute


class StepJob(submitit.helpers.Checkpointable):
    """``StepJob()(study, step)``: the step, as :func:`robustlab.study.steps.execute` runs it locally."""

    def __call__(self, study: Study, step: Step) -> float:
        return execute(study, step)
