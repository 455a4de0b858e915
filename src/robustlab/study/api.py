"""``robustlab study run|report|plan``: check a study, run its pending steps, write its page."""

from __future__ import annotations

import shlex
from typing import Any, Callable

from robustlab.errors import UserError
from robustlab.study.local import run_local
from robustlab.study.page import claim_outputs, page_text, write_results
from robustlab.study.plan import Options, Study
from robustlab.study.slurm import SlurmOptions, submit_slurm


def plan_study(study: Study, log: Callable[[str], None] = print) -> None:
    """Print the commands still to run, dependencies first; run nothing."""
    study.check_records()
    steps = study.pending()
    for step in steps:
        log("robustlab " + shlex.join(study.command(step)))
    log(f"{len(steps)} steps to do")


def run_study(study: Study, executor: str = "local", slurm: SlurmOptions | None = None,
              log: Callable[[str], None] = print) -> None:
    """Run (local) or submit (slurm) every pending step, then write the page from the records present.

    Before anything runs: every output path is claimed (:func:`robustlab.study.page.claim_outputs`), existing
    records are checked against the study's settings (and the settings of records that predate the settings file
    are filed) and the page is built once in memory, so a bad path or page section fails in seconds, not after the
    study.
    """
    claim_outputs(study)
    study.check_records(adopt=True)
    page_text(study)
    steps = study.pending()
    if executor == "slurm":
        submit_slurm(study, steps, slurm or SlurmOptions(), log=log)
    else:
        run_local(study, steps, log=log)
    log(write_results(study, log=log))


def report_study(study: Study, log: Callable[[str], None] = print) -> None:
    """Write the page from the records present; run nothing."""
    claim_outputs(study)
    study.check_records()
    log(write_results(study, log=log))


def study_from_args(args: Any) -> None:
    """``robustlab study ACTION STUDY [options]`` (the parsed arguments of :mod:`robustlab.cli`)."""
    from robustlab.study.spec import load_study

    for flag, value in (("--gpus-per-job", args.gpus_per_job), ("--time-limit", args.time_limit),
                        ("--cpus-per-job", args.cpus_per_job)):
        if value is not None and value < (0 if flag == "--gpus-per-job" else 1):
            raise UserError(f"{flag} must be {'>= 0' if flag == '--gpus-per-job' else 'a positive integer'}, got "
                            f"{value}")
    options = Options(data_root=args.data_root, overrides=tuple(args.override), runs=args.runs, results=args.results,
                      page=args.page, readme=args.readme)
    study = Study(load_study(args.study), options)
    if args.action == "plan":
        plan_study(study)
    elif args.action == "report":
        report_study(study)
    else:
        slurm = SlurmOptions(partition=args.partition, gpus_per_job=args.gpus_per_job, time_limit_min=args.time_limit,
                             account=args.account, cpus_per_job=args.cpus_per_job)
        run_study(study, args.executor, slurm)
