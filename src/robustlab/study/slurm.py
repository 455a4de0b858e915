"""``--executor slurm``: one SLURM job per pending step, through submitit, with train → eval dependencies.

Each step becomes one job (``sbatch`` through submitit) that runs the step's command exactly as the
local executor does (:mod:`robustlab.study.slurm_job`); a step waits for the steps it needs with
``--dependency=afterok:ID[:ID]``. Options: partition, GPUs per job (one task, i.e. one DDP rank, per GPU:
:mod:`robustlab.study.slurm_job`), time limit (minutes), account, CPUs per job (split among its tasks). Logs and
submitit's pickles go to ``RUNS/slurm/``; the job id of every step goes to ``RUNS/slurm_jobs.json``. On the next
``study run`` a step that is still pending is left alone while its job is queued or running (``sacct``), and resubmitted
when its job failed, was preempted, timed out, was cancelled or is unknown; a queued job that waits on a resubmitted
step is cancelled (``scancel``) and resubmitted after it; a step whose record exists is never submitted again.

``cluster="local"`` uses submitit's LocalExecutor for the same code path (no SLURM, no afterok: a step's
job starts once the jobs it depends on have returned); the tests use it. submitit is imported only here,
when this executor is used (``pip install 'robustlab[slurm]'``).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from robustlab.errors import UserError
from robustlab.study.plan import Step, Study, _read_json, update_json
from robustlab.study.steps import StepFailed

JOBS_FILE = "slurm_jobs.json"
# sacct states of a job that may still finish by itself (https://slurm.schedmd.com/sacct.html#SECTION_JOB-STATE-CODES)
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}


@dataclass(frozen=True)
class SlurmOptions:
    """sbatch settings of every job of a study."""

    partition: str | None = None
    gpus_per_job: int = 1
    time_limit_min: int = 240
    account: str | None = None
    cpus_per_job: int | None = None
    processes_per_job: int | None = None  # DDP ranks per step (default: one per GPU, at least one)
    cluster: str = "slurm"  # "local": submitit's LocalExecutor (submitit >= 1.5.4: older ones need pkg_resources)


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit; pip install 'robustlab[slurm]'") from None
    return submitit


def job_states(folder: Path, job_ids: list[str]) -> dict[str, str]:
    """sacct's state of each job id (``UNKNOWN`` when sacct does not know it)."""
    if not job_ids:
        return {}
    submitit = _submitit()
    watcher = submitit.SlurmJob.watcher
    watcher.clear()  # no state cached from an earlier study in this process
    for job_id in job_ids:
        watcher.register_job(job_id)
    watcher.update()
    return {job_id: watcher.get_state(job_id, mode="cache").split(" ")[0] for job_id in job_ids}


def _executor(submitit: Any, folder: Path, step: Step, options: SlurmOptions, after: list[str]) -> Any:
    """A submitit executor set up for ``step``: SlurmExecutor's sbatch flags, or the LocalExecutor's few."""
    tasks = options.processes_per_job or max(1, options.gpus_per_job)
    if options.cluster != "slurm":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=options.time_limit_min, gpus_per_node=options.gpus_per_job,
                                   tasks_per_node=tasks, nodes=1)
        return executor
    executor = submitit.SlurmExecutor(folder=folder)
    params: dict[str, Any] = {"job_name": f"robustlab-{step.kind}-{step.job.name}", "time": options.time_limit_min,
                              "gpus_per_node": options.gpus_per_job, "ntasks_per_node": tasks, "nodes": 1}
    cpus = None if options.cpus_per_job is None else max(1, options.cpus_per_job // tasks)
    extra = {"partition": options.partition, "account": options.account, "cpus_per_task": cpus,
             "dependency": "afterok:" + ":".join(after) if after else None}
    executor.update_parameters(**params, **{k: v for k, v in extra.items() if v is not None})
    return executor


def submit_slurm(study: Study, steps: list[Step], options: SlurmOptions, log: Callable[[str], None] = print) -> None:
    """Submit every pending step not already queued or running (see the module docstring)."""
    submitit = _submitit()
    from robustlab.study.slurm_job import StepJob

    folder = study.out / "slurm"
    jobs_path = study.out / JOBS_FILE
    known = _read_json(jobs_path)
    states = (job_states(folder, [known[s.key]["job_id"] for s in steps if s.key in known])
              if options.cluster == "slurm" else {})
    current: dict[str, Any] = {}  # step key -> job id (slurm) or submitit job (local) of this run
    fresh: set[str] = set()  # steps (re)submitted by this run
    for step in steps:
        before = known.get(step.key)
        state = states.get(before["job_id"], "UNKNOWN") if before else None
        deps = [d.key for d in study.dependencies(step) if d.key in current]
        if state in ACTIVE and not fresh.intersection(deps):
            current[step.key] = before["job_id"]
            log(f"{step.key}: job {before['job_id']} is {state}; left alone")
            continue
        if state in ACTIVE:  # it waits on a job this run replaced: it would never start
            subprocess.run(["scancel", before["job_id"]], check=False)
            state = f"{state}, cancelled: it waited on a resubmitted step"
        if options.cluster != "slurm":
            for key in deps:  # no afterok without SLURM: wait for the jobs this step needs
                _result(current[key], key)
        try:
            executor = _executor(submitit, folder, step, options, [str(current[k]) for k in deps])
            job = executor.submit(StepJob(), study, step)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:  # no SLURM here, or sbatch refused
            detail = " ".join(str(exc).split())[:300]
            raise UserError(f"could not submit {step.key} ({detail}); run on a SLURM login node, fix the sbatch "
                            "options, or use --executor local") from None
        current[step.key] = job if options.cluster != "slurm" else job.job_id
        fresh.add(step.key)
        entry = {"job_id": str(job.job_id), "submissions": (before or {}).get("submissions", 0) + 1,
                 "previous": None if before is None else {"job_id": before["job_id"], "state": state}}
        update_json(jobs_path, lambda data, e=entry, k=step.key: data.update({k: e}))
        why = "" if before is None else f" (job {before['job_id']} was {state}; resubmitted)"
        log(f"{step.key}: submitted job {job.job_id}{why}")
    if options.cluster != "slurm":
        for key, job in current.items():
            _result(job, key)
    elif steps:
        log(f"{len(steps)} steps queued or running; logs in {folder}. Rerun `robustlab study run` to resubmit "
            "failed or preempted steps, `robustlab study report` to write the page from the records so far.")


def _result(job: Any, key: str) -> None:
    """Wait for a local submitit job; its failure is one line naming its log."""
    try:
        job.results()  # every task's
    except Exception:  # submitit re-raises the job's own exception, whatever it is
        raise StepFailed(f"{key} failed in job {job.job_id} (log: {job.paths.stderr}); fix it and rerun the "
                         "study") from None
