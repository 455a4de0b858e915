"""What one SLURM job of a study runs; imported only by the job itself and by ``--executor slurm``.

A :class:`submitit.helpers.Checkpointable`, so a job preempted or timed out under SLURM is requeued by
submitit with the same arguments; the step then resumes from its run folder (training and evaluation
resume themselves). A job with several tasks (one per GPU) exports the ``torch.distributed`` environment
(``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) from SLURM's, so every task runs
the step's command as one DDP rank, as under torchrun; ``CUDA_VISIBLE_DEVICES`` is left alone, since each
rank takes ``cuda:LOCAL_RANK`` itself.
"""

from __future__ import annotations

import submitit

from robustlab.study.plan import Step, Study
from robustlab.study.steps import execute


class StepJob(submitit.helpers.Checkpointable):
    """``StepJob()(study, step)``: the step, as :func:`robustlab.study.steps.execute` runs it locally."""

    def __call__(self, study: Study, step: Step) -> float:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return execute(study, step, main=env.global_rank == 0)
