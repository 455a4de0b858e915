"""Studies: rows × seeds under one evaluation protocol, run by ``robustlab study`` and written up from the records.

``spec`` (the study file), ``plan`` (jobs, commands, what is left, settings of existing records),
``steps`` (one step, the same under every executor), ``local`` / ``slurm`` (executors), ``page`` and
``text`` (the results page), ``api`` (the commands).
"""

from robustlab.study.api import plan_study, report_study, run_study
from robustlab.study.plan import Job, Options, Step, Study
from robustlab.study.spec import StudySpec, bundled_study_names, load_study

__all__ = ["Job", "Options", "Step", "Study", "StudySpec", "bundled_study_names", "load_study", "plan_study",
           "report_study", "run_study"]
