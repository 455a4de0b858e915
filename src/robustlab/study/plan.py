"""A study's plan: its (row, seed) jobs, the ``robustlab`` commands of each step, and what is left to do.

Every job is one run folder trained by ``robustlab train`` (or ``finetune --from`` its source row's run of
the same seed) and evaluated by ``robustlab eval`` into ``RUN/eval/<results folder>.json``; the record is then copied
to the results folder, last and atomically, so its presence marks the job finished. A step is skipped
when its outcome exists (a finished training's last epoch in ``metrics.jsonl``, a copied record), and a
run is trained only when an unfinished evaluation or fine-tuning needs it. Training and evaluation resume
themselves after a kill, so rerunning a study resumes it.

An existing record made under other settings is refused (one line): the settings of each copied record
(the resolved training config and the evaluation options) are kept in ``RESULTS/study_settings.json``;
a record copied before that file existed is checked against what it carries itself (method, epochs,
number of images, attacks, adaptive).

A study with an ``audit`` block (:class:`robustlab.study.spec.Audit`) gives each job an ``audit`` step after its
training: ``robustlab audit`` into ``RUN/audit/<results folder>.json``, copied to ``RESULTS/<run>.audit.json``, whose
presence marks it done. A copied audit record made with other audit settings (attacks, images, inner points, which
it carries itself) is refused as an evaluation record is.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from robustlab.atomic import atomic_write_text
from robustlab.config import RunConfig, load_config, to_flat_dict
from robustlab.errors import UserError
from robustlab.evaluate.audit.record import read_audit
from robustlab.ownership import METRICS_LOG, Kind, json_object
from robustlab.report.compare import load_record
from robustlab.runs.metrics import read_metrics
from robustlab.study.spec import Row, StudySpec, check_overrides

SETTINGS_FILE = "study_settings.json"
# keys of the resolved config that name where a run lives, not what it computes
LOCATION_KEYS = ("name", "out_dir", "data.root")
# config keys added after studies filed their records, left out of a record's settings at these defaults so that
# records made before them keep matching
LATER_DEFAULTS = {"data.val_examples": 0}


@dataclass(frozen=True)
class Job:
    """One (row, seed): one run folder and one evaluation record."""

    row: Row
    seed: int

    @property
    def name(self) -> str:
        return f"{self.row.stem}_s{self.seed}"


@dataclass(frozen=True)
class Step:
    """``train`` (or fine-tune), ``eval`` or ``audit`` of one job."""

    kind: str
    job: Job

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.job.name}"


@dataclass(frozen=True)
class Options:
    """What the command line adds to a study file: the data root, overrides and output locations."""

    data_root: str | None = None
    overrides: tuple[str, ...] = ()
    runs: str | None = None
    results: str | None = None
    page: str | None = None
    readme: str | None = None  # "none": no README table


class Study:
    """The plan, the commands and the bookkeeping of one study folder."""

    def __init__(self, spec: StudySpec, options: Options = Options()) -> None:
        self.spec = spec
        self.options = options
        self.out = Path(options.runs or spec.outputs.runs)
        self.results = Path(options.results or spec.outputs.results)
        self.doc = Path(options.page or spec.outputs.page)
        readme = options.readme if options.readme is not None else spec.outputs.readme
        self.readme = None if readme in (None, "none") else Path(readme)
        self.data_root = options.data_root or spec.data_root
        self.jobs = [Job(r, s) for s in spec.seeds for r in spec.rows if s in r.seeds]
        self.by_key = {(j.row.label, j.seed): j for j in self.jobs}
        self.timings_path = self.results / "timings.json"
        self.timings: dict[str, dict[str, float]] = _read_json(self.timings_path)
        self.settings_path = self.results / SETTINGS_FILE
        check_overrides(options.overrides, "--override")
        self._configs = {job: self._resolve(job) for job in self.jobs}  # a bad row fails before any step runs

    # ------------------------------------------------------------------ commands
    def command_line(self) -> list[str]:
        """The study's own command as the page shows it (output locations left out: they change no number)."""
        line = ["robustlab", "study", "run", self.spec.source]
        if self.options.data_root and self.options.data_root != self.spec.data_root:
            line += ["--data-root", self.options.data_root]
        return line + [f"--override={o}" for o in self.options.overrides]

    def overrides(self, job: Job) -> list[str]:
        """The job's ``key=value`` list, later ones winning: the keys the study sets per job (``spec.RESERVED``),
        then the study-wide overrides, the row's, the command line's (the most specific wins)."""
        common = [f"data.root={self.data_root}"] if self.data_root else []
        common += [f"out_dir={self.out}", f"name={job.name}", f"seed={job.seed}"]
        return common + list(self.spec.overrides) + list(job.row.overrides) + list(self.options.overrides)

    def config(self, job: Job) -> RunConfig:
        """The job's resolved config (all of them are resolved, and checked, when the study is built)."""
        return self._configs[job]

    def _resolve(self, job: Job) -> RunConfig:
        """Load the job's config; a fine-tuning config (``finetune: true``) needs ``finetune_from`` and
        ``finetune_from`` needs a fine-tuning config."""
        row = job.row
        try:
            cfg = load_config(row.config, self.overrides(job))
        except UserError as exc:
            raise UserError(f"row {row.label!r} seed {job.seed}: {exc}") from None
        if cfg.finetune and row.finetune_from is None:
            raise UserError(f"row {row.label!r}: {row.config} is a fine-tuning config; give the row finetune_from: ROW")
        if row.finetune_from is not None and not cfg.finetune:
            raise UserError(f"row {row.label!r}: {row.config} is not a fine-tuning config (it lacks finetune: true), "
                            f"but the row fine-tunes from {row.finetune_from!r}; give it a fine-tuning config (e.g. "
                            "digits_finetune_pgd_at), or drop finetune_from to train it from scratch")
        return cfg

    def source(self, job: Job, label: str | None) -> Job | None:
        return None if label is None else self.by_key[(label, job.seed)]

    def transfer_source(self, job: Job) -> Job | None:
        wanted = job.row.adaptive and self.spec.evaluation.transfer == "base"
        return self.source(job, job.row.base) if wanted else None

    def run_dir(self, job: Job) -> Path:
        return self.out / job.name

    def train_command(self, job: Job) -> list[str]:
        source = self.source(job, job.row.finetune_from)
        if source is None:
            return ["train", job.row.config, *self.overrides(job), "--quiet"]
        return ["finetune", job.row.config, "--from", str(self.run_dir(source)), *self.overrides(job), "--quiet"]

    def eval_command(self, job: Job) -> list[str]:
        e = self.spec.evaluation
        cmd = (["eval", str(self.run_dir(job)), "--attacks", ",".join(e.attacks), "--n-examples", str(e.n_examples),
                "--batch-size", str(e.batch_size)] + ["--channels-last"] * e.channels_last
               + ["--no-checks"] * (not e.checks))
        cmd += ["--verify", str(e.verify)] if e.verify is not None else []
        cmd += ["--out", str(self.eval_out(job))]
        if job.row.adaptive:
            cmd.append("--adaptive")
            transfer = self.transfer_source(job)
            cmd += ["--transfer-from", str(self.run_dir(transfer))] if transfer is not None else []
        return cmd

    def audit_command(self, job: Job) -> list[str]:
        """``robustlab audit`` of the job's run with the study's audit block (a study without one has none)."""
        a = self.spec.audit
        if a is None:
            raise ValueError("the study has no audit block")
        return ["audit", str(self.run_dir(job)), "--attacks", ",".join(a.attacks), "--n-images", str(a.n_images),
                "--inner-points", str(a.inner_points), "--out", str(self.audit_out(job))]

    def command(self, step: Step) -> list[str]:
        if step.kind == "audit":
            return self.audit_command(step.job)
        return self.train_command(step.job) if step.kind == "train" else self.eval_command(step.job)

    def audit_out(self, job: Job) -> Path:
        """``RUN/audit/<results folder>.json``, as :meth:`eval_out`."""
        return self.run_dir(job) / "audit" / f"{self.results.name}.json"

    def eval_out(self, job: Job) -> Path:
        """``RUN/eval/<results folder>.json``: studies that share a runs folder (``cifar10s`` and
        ``cifar10s_fast``) evaluate the same run into files of their own."""
        return self.run_dir(job) / "eval" / f"{self.results.name}.json"

    # ------------------------------------------------------------------ state
    def record_path(self, job: Job) -> Path:
        return self.results / f"{job.name}.json"

    def audit_path(self, job: Job) -> Path:
        """The copy of the job's audit record in the results folder."""
        return self.results / f"{job.name}.audit.json"

    def metrics_copy(self, job: Job) -> Path:
        """The run's ``metrics.jsonl``, copied beside its record (feature gaps and wall times for the page)."""
        return self.results / f"{job.name}.metrics.jsonl"

    def outputs(self) -> list[tuple[Path, Kind]]:
        """The results folder's files this study writes, with the kind each must be when it exists: per job its
        metrics copy (and its audit record copy when the study audits), and the timings and settings files. (A file
        at a record copy's path is checked by :meth:`check_records`, which refuses anything but a usable record made
        under the study's settings.)"""
        from robustlab.evaluate.audit.record import AUDIT

        audits = [(self.audit_path(job), AUDIT.record) for job in self.jobs] if self.spec.audit is not None else []
        return [*((self.metrics_copy(job), METRICS_LOG) for job in self.jobs), *audits,
                (self.timings_path, BOOKKEEPING), (self.settings_path, BOOKKEEPING)]

    def done(self, step: Step) -> bool:
        if step.kind == "audit":
            return self.audit_path(step.job).is_file()
        return self.trained(step.job) if step.kind == "train" else self.record_path(step.job).is_file()

    def trained(self, job: Job) -> bool:
        epochs = self.config(job).train.epochs
        run = self.run_dir(job)
        finished = read_metrics(run, "epoch") if (run / "metrics.jsonl").is_file() else []
        return any(r.get("epoch", 0) >= epochs for r in finished)

    def dependencies(self, step: Step) -> list[Step]:
        """The steps that must finish first: a fine-tuning's source training; an evaluation's own training
        and its transfer source's; an audit's own training."""
        job = step.job
        if step.kind == "audit":
            return [Step("train", job)]
        if step.kind == "train":
            source = self.source(job, job.row.finetune_from)
            return [Step("train", source)] if source is not None else []
        transfer = self.transfer_source(job)
        return [Step("train", job)] + ([Step("train", transfer)] if transfer is not None else [])

    def pending(self) -> list[Step]:
        """The steps still to do, dependencies first; a run is trained only when a missing record needs it.
        Jobs of rows that run on every seed come first, so a study cut short still has its multi-seed claims."""
        needed: list[Step] = []

        def need(step: Step) -> None:
            for dep in self.dependencies(step):
                need(dep)
            if step not in needed and not self.done(step):
                needed.append(step)

        full = set(self.spec.seeds)
        first = [j for j in self.jobs if set(j.row.seeds) == full]
        for job in first + [j for j in self.jobs if j not in first]:
            if not self.record_path(job).is_file():
                need(Step("eval", job))
            if self.spec.audit is not None and not self.audit_path(job).is_file():
                need(Step("audit", job))
        return needed

    # ------------------------------------------------------------------ settings of existing records
    def settings(self, job: Job) -> dict[str, Any]:
        """What a record's numbers depend on: the resolved config (flat, locations left out) and the evaluation."""
        config = {k: v for k, v in to_flat_dict(self.config(job)).items()
                  if k not in LOCATION_KEYS and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}
        e = self.spec.evaluation
        transfer = self.transfer_source(job)
        settings = {f"config {k}": json.loads(json.dumps(v, default=str)) for k, v in sorted(config.items())}
        verify = {} if e.verify is None else {"verify": e.verify}  # absent when unset: older records keep matching
        return {**settings, "attacks": list(e.attacks), "n_examples": e.n_examples, "checks": e.checks, **verify,
                "adaptive": job.row.adaptive, "transfer_from": None if transfer is None else transfer.name,
                "source": (None if job.row.finetune_from is None
                           else self.by_key[(job.row.finetune_from, job.seed)].name)}

    def check_records(self, adopt: bool = False) -> None:
        """Refuse any existing record made under other settings; ``adopt`` files the settings of records that
        predate the settings file (after checking what they carry)."""
        kept = _read_json(self.settings_path)
        changed = False
        for job in self.jobs:
            path = self.record_path(job)
            if not path.is_file():
                continue
            now = self.settings(job)
            before = kept.get(job.name)
            if before is None:
                self._check_carried(job, load_record(path))
                if adopt:
                    kept[job.name], changed = now, True
                continue
            diff = [k for k in {**before, **now} if before.get(k) != now.get(k)]
            if diff:
                key = diff[0]
                raise UserError(f"record {path} was made with {key}={before.get(key)!r}, the study now gives "
                                f"{now.get(key)!r}; restore the setting, or delete the record (and its run folder) to "
                                "redo it")
        if changed:
            update_json(self.settings_path, lambda data: data.update(kept))
        if self.spec.audit is not None:
            for job in self.jobs:
                self._check_audit(job)

    def _check_audit(self, job: Job) -> None:
        """Refuse a copied audit record made with other audit settings than the study's (what the record carries)."""
        path = self.audit_path(job)
        if not path.is_file():
            return
        a = self.spec.audit
        assert a is not None
        record = read_audit(path)
        carried = {"attacks": (record.get("attacks_requested"), list(a.attacks)),
                   "n_images": (record.get("n_images"), a.n_images),
                   "inner_points": (record.get("inner_points"), a.inner_points)}
        for key, (was, now) in carried.items():
            if was != now:
                raise UserError(f"audit record {path} has {key}={was!r}, the study now gives {now!r}; restore the "
                                "setting, or delete the audit record to redo it")

    def _check_carried(self, job: Job, record: dict[str, Any]) -> None:
        cfg = self.config(job)
        e = self.spec.evaluation
        carried = {"method": (record.get("method"), cfg.method.name), "epoch": (record.get("epoch"), cfg.train.epochs),
                   "n_examples": (record.get("n_examples"), e.n_examples),
                   "checks": (bool(record.get("checks_run")), e.checks),
                   "adaptive": ("adaptive" in record.get("attacks", {}), job.row.adaptive)}
        for attack in e.attacks:  # a randomized model's autoattack is recorded as autoattack-rand
            present = any(k == attack or k.startswith(f"{attack}-") for k in record.get("attacks", {}))
            carried[f"attack {attack}"] = (present, True)
        for key, (was, now) in carried.items():
            if was != now:
                raise UserError(f"record {self.record_path(job)} has {key}={was!r}, the study now gives {now!r}; "
                                "restore the setting, or delete the record (and its run folder) to redo it")

    def file_settings(self, job: Job) -> None:
        """Keep the settings of a record just copied."""
        settings = self.settings(job)
        update_json(self.settings_path, lambda kept: kept.update({job.name: settings}))

    def record_time(self, job: Job, kind: str, seconds: float) -> None:
        def add(timings: dict[str, Any]) -> None:
            entry = timings.setdefault(job.name, {})
            entry[f"{kind}_s"] = round(entry.get(f"{kind}_s", 0.0) + seconds, 1)

        self.timings = update_json(self.timings_path, add)


def update_json(path: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read, change and atomically rewrite a JSON object under an exclusive ``flock`` of its folder (SLURM jobs of
    one study finish concurrently); returns the new content. Deviation: ``flock`` is advisory and, on some
    network file systems, local to a node."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)  # the folder's lock: no lock file left among the records
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        data = _read_json(path)
        change(data)
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    finally:
        os.close(folder)  # closing the descriptor drops the lock
    return data


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON; restore it from version control or delete it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object; restore it from version control or delete it")
    odd = next((k for k, v in data.items() if not isinstance(v, dict)), None)
    if odd is not None:
        raise UserError(f"{path} holds {odd!r}: {data[odd]!r}, where robustlab keeps an object per entry; restore it "
                        "from version control or delete it")
    return data


def _bookkeeping(path: Path) -> bool:
    """A study's JSON bookkeeping file (timings, settings, SLURM jobs): an object of objects."""
    data = json_object(path)
    return data is not None and all(isinstance(v, dict) for v in data.values())


BOOKKEEPING = Kind("a robustlab study file (an object per step)", _bookkeeping)
