"""The CIFAR-10 study of issue 10: every method on the ``cifar10s_*`` protocol, with seeds and paired intervals.

Trains through ``robustlab train`` / ``robustlab finetune`` and evaluates through ``robustlab eval`` (the
commands are printed and listed in the results page): per seed the natural model; ``pgd_at``, ``trades``,
``mart``, each ``+fsr`` and ``+ancra``; ``pgd_at+uad``, ``trades+uad`` and a one-seed ablation of UAD-AT's
three components; vanilla adversarial fine-tuning and AFD from the natural run. Seed 0 runs everything;
seeds 1 and 2 the four main pairs (pgd_at vs +fsr, trades vs +ancra, pgd_at vs +uad, vanilla fine-tuning
vs AFD). Each model is evaluated on the same fixed test images (1,000, subset seed 0): clean, PGD-20 and
standard AutoAttack, plug-ins also ``--adaptive`` with transfer from the same seed's base; checks on;
per-sample worst case; models run channels-last (faster convolutions on CPU). Records are copied to ``--results``
as they finish (the four main pairs over all seeds first), then ``docs/results.md`` is
written from them (tables, paired bootstrap intervals from :mod:`robustlab.report.compare`, verdicts).

Resumable: a finished evaluation (its record in ``--results``) is skipped, and a run is trained only when
an unfinished evaluation or fine-tuning needs it (training and evaluation resume themselves after a
kill). When everything is done a rerun only prints the table.

    python benchmarks/cifar_study.py --data-root ../shared/data/cifar10-jpeg.tar.gz
    python benchmarks/cifar_study.py --data-root DATA --quick       # one seed, 200 images, one epoch; temp output
    python benchmarks/cifar_study.py --data-root DATA --plan        # print the commands, run nothing
    python benchmarks/cifar_study.py --data-root DATA --report      # the page from the records so far, run nothing
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _study_report import write_results  # noqa: E402

from robustlab.cli import main as robustlab  # noqa: E402
from robustlab.config import load_config  # noqa: E402
from robustlab.runs.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402
from robustlab.runs.metrics import read_metrics  # noqa: E402

BASES = ("pgd_at", "trades", "mart")
MAIN = ("natural", "pgd_at", "pgd_at+fsr", "trades", "trades+ancra", "pgd_at+uad", "finetune: vanilla", "finetune: afd")
QUICK = ("natural", "pgd_at", "pgd_at+fsr", "finetune: vanilla", "finetune: afd")
UAD_ABLATIONS = {
    "dsu_only": ("method.options.refined_reference=false", "method.options.iga=false"),
    "reference_only": ("method.options.dsu=false", "method.options.iga=false"),
    "iga_only": ("method.options.dsu=false", "method.options.refined_reference=false"),
}
ATTACKS = "pgd-20,autoattack"
# Relative cost per epoch (PGD-AT = 1) for the ETA before timings exist: benchmarks/method_overhead.py
# --model preact_resnet_small --batch-size 32 (one thread, under load): FSR 1.06, UAD-AT 1.59, ANCRA 2.25, AFD 0.93.
COST = {"natural": 1 / 11, "+fsr": 1.06, "+ancra": 2.25, "+uad": 1.6, "afd": 0.93}
# Seconds on 2 idle cores, replaced by this session's timings once a step of the kind has run. A PGD-AT epoch:
# 62 steps x ~1.25 s (2.06 s measured on one thread). An evaluation of a robust model: standard AutoAttack
# spends ~1,900 gradient and 5,000 forward passes on every surviving image (~3.5 s each), ~150 survivors.
PRIOR_S = {"epoch": 80.0, "eval": 600.0}


@dataclass(frozen=True)
class Row:
    """One configuration of the table: its label, bundled config, base (for pairing and transfer)."""

    label: str
    config: str
    base: str | None = None
    source: str | None = None  # fine-tuning: label of the run it starts from
    adaptive: bool = False
    overrides: tuple[str, ...] = ()
    suffix: str = ""


def rows() -> list[Row]:
    """Every configuration of the study, in table order."""
    out = [Row("natural", "cifar10s_natural")]
    out += [Row(b, f"cifar10s_{b}") for b in BASES]
    out += [Row(f"{b}+{p}", f"cifar10s_{b}_{p}", base=b, adaptive=True) for p in ("fsr", "ancra") for b in BASES]
    out += [Row(f"{b}+uad", f"cifar10s_{b}_uad", base=b, adaptive=True) for b in ("pgd_at", "trades")]
    out += [Row(f"pgd_at+uad: {k.replace('_', ' ')}", "cifar10s_pgd_at_uad", base="pgd_at", adaptive=True,
                overrides=v, suffix=k) for k, v in UAD_ABLATIONS.items()]
    out += [Row("finetune: vanilla", "cifar10s_finetune_pgd_at", source="natural"),
            Row("finetune: afd", "cifar10s_finetune_afd", base="finetune: vanilla", source="natural")]
    return out


@dataclass(frozen=True)
class Job:
    """One (row, seed): its run folder name and the commands that train and evaluate it."""

    row: Row
    seed: int

    @property
    def name(self) -> str:
        return f"{self.row.config}{'_' + self.row.suffix if self.row.suffix else ''}_s{self.seed}"


class Study:
    """The plan, the commands and the bookkeeping of one study folder."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out_dir)
        self.results = Path(args.results)
        wanted = QUICK if args.quick else None
        seeds = [0] if args.quick else [0, 1, 2]
        chosen = [r for r in rows() if wanted is None or r.label in wanted]
        self.jobs = [Job(r, s) for s in seeds for r in chosen if s == 0 or r.label in MAIN]
        self.by_key = {(j.row.label, j.seed): j for j in self.jobs}
        self.timings_path = self.results / "timings.json"
        self.timings: dict[str, dict[str, float]] = (
            json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {})

    # ------------------------------------------------------------------ commands
    def command_line(self) -> list[str]:
        """The study's own command, every option spelled out (the page shows it)."""
        a = self.args
        line = ["python", "benchmarks/cifar_study.py", "--data-root", str(a.data_root), "--out-dir", str(a.out_dir),
                "--results", str(a.results), "--doc", str(a.doc), "--n-examples", str(a.n_examples), "--batch-size", str(a.batch_size)]
        return line + ["--quick"] * a.quick + (["--override", *a.override] if a.override else [])

    def overrides(self, job: Job) -> list[str]:
        common = [f"data.root={self.args.data_root}", f"out_dir={self.out}", f"name={job.name}", f"seed={job.seed}"]
        return common + list(job.row.overrides) + self.args.preset + list(self.args.override)

    def train_command(self, job: Job) -> list[str]:
        if job.row.source is None:
            return ["train", job.row.config, *self.overrides(job), "--quiet"]
        source = self.out / self.by_key[(job.row.source, job.seed)].name
        return ["finetune", job.row.config, "--from", str(source), *self.overrides(job), "--quiet"]

    def eval_command(self, job: Job) -> list[str]:
        cmd = ["eval", str(self.out / job.name), "--attacks", ATTACKS, "--n-examples", str(self.args.n_examples),
               "--batch-size", str(self.args.batch_size), "--channels-last", "--out", str(self.out / job.name / "eval" / "study.json")]
        if job.row.adaptive:
            cmd += ["--adaptive", "--transfer-from", str(self.out / self.by_key[(job.row.base, job.seed)].name)]
        return cmd

    # ------------------------------------------------------------------ state
    def record_path(self, job: Job) -> Path:
        return self.results / f"{job.name}.json"

    def trained(self, job: Job) -> bool:
        epochs = load_config(job.row.config, self.overrides(job)).train.epochs
        done = read_metrics(self.out / job.name, "epoch") if (self.out / job.name / "metrics.jsonl").is_file() else []
        return any(r.get("epoch", 0) >= epochs for r in done)

    def pending(self) -> list[tuple[str, Job]]:
        """The ("train"|"eval", job) steps still to do, in order: a run is trained only when needed."""
        needed: list[Job] = []
        for job in self.jobs:
            if not self.record_path(job).is_file():
                deps = [self.by_key[(label, job.seed)] for label in (job.row.source,) if label]
                deps += [self.by_key[(job.row.base, job.seed)]] if job.row.adaptive else []
                needed += [d for d in deps if d not in needed] + ([job] if job not in needed else [])
        steps = [("train", j) for j in self.jobs if j in needed and not self.trained(j)]
        evals = [("eval", j) for j in self.jobs if not self.record_path(j).is_file()]
        # the four main pairs over all seeds first, so a study cut short still has its three-seed claims
        first = [j for j in self.jobs if j.row.label in MAIN]
        order = {j: i for i, j in enumerate(first + [j for j in self.jobs if j not in first])}
        return sorted(steps + evals, key=lambda s: (order[s[1]], s[0] == "eval"))

    def cost(self, step: tuple[str, Job]) -> tuple[str, float]:
        kind, job = step
        if kind == "eval":  # a natural model has almost no AutoAttack survivors
            return "eval", 0.1 if job.row.label == "natural" else (1.5 if job.row.adaptive else 1.0)
        cfg = load_config(job.row.config, self.overrides(job))
        factor = 1.0
        for key, value in COST.items():
            if key in cfg.method.name:
                factor *= value
        return "epoch", factor * cfg.train.epochs

    def record_time(self, job: Job, kind: str, seconds: float) -> None:
        entry = self.timings.setdefault(job.name, {})
        entry[f"{kind}_s"] = round(entry.get(f"{kind}_s", 0.0) + seconds, 1)
        self.results.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.timings_path, json.dumps(self.timings, indent=1, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ running
    def run(self) -> None:
        steps = self.pending()
        if steps:
            print(f"{len(steps)} steps to do ({sum(k == 'train' for k, _ in steps)} trainings, "
                  f"{sum(k == 'eval' for k, _ in steps)} evaluations); results in {self.results}", flush=True)
        spent = {"epoch": [0.0, 0.0], "eval": [0.0, 0.0]}  # unit -> [seconds, cost units] done this session
        for i, (kind, job) in enumerate(steps):
            command = self.train_command(job) if kind == "train" else self.eval_command(job)
            print(f"[{i + 1}/{len(steps)}] robustlab {shlex.join(command)}", flush=True)
            started = time.perf_counter()
            if robustlab(command) != 0:
                raise SystemExit(f"step failed: robustlab {shlex.join(command)}; fix it and rerun to resume")
            seconds = time.perf_counter() - started
            self.record_time(job, kind, seconds)
            if kind == "eval":  # the record last and atomically: its presence marks the evaluation finished
                run = self.out / job.name
                atomic_write_bytes(self.results / f"{job.name}.metrics.jsonl", (run / "metrics.jsonl").read_bytes())
                atomic_write_bytes(self.record_path(job), (run / "eval" / "study.json").read_bytes())
            unit, units = self.cost((kind, job))
            spent[unit][0] += seconds
            spent[unit][1] += units
            print(f"    done in {seconds:.0f} s; ETA {eta(self.cost, steps[i + 1:], spent)}", flush=True)


def eta(cost: Any, remaining: list[tuple[str, Job]], spent: dict[str, list[float]]) -> str:
    """Remaining time from this session's seconds per cost unit (training epochs, evaluations), else the prior."""
    total = 0.0
    for step in remaining:
        unit, units = cost(step)
        seconds, done = spent[unit]
        total += units * (seconds / done if done else PRIOR_S[unit])
    hours, rest = divmod(int(total), 3600)
    return f"{hours}h{rest // 60:02d}m"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="cifar10-jpeg.tar.gz or its unpacked folder (train|test/CLASS/*.jpg)")
    parser.add_argument("--out-dir", default=None, help="run folders (default runs/cifar_study; --quick: a temp folder)")
    parser.add_argument("--results", default=None, help="record copies (default docs/results; --quick: OUT/results)")
    parser.add_argument("--doc", default=None, help="the results page (default docs/results.md; --quick: OUT/results.md)")
    parser.add_argument("--readme", default=None, help="a file whose marked table block gets the study's table (default README.md; --quick: none)")
    parser.add_argument("--quick", action="store_true", help="one seed, a subset of configurations, one epoch, 200 images")
    parser.add_argument("--n-examples", type=int, default=None, help="test images evaluated (default 1000; --quick 200)")
    parser.add_argument("--batch-size", type=int, default=250, help="evaluation batch (verdicts are saved per batch)")
    parser.add_argument("--override", nargs="*", default=[], help="key=value added to every training run, e.g. method.attack.eps=4/255")
    parser.add_argument("--plan", action="store_true", help="print the remaining commands and exit")
    parser.add_argument("--report", action="store_true", help="write the page from the records present and exit (a partial study)")
    args = parser.parse_args(argv)
    args.preset = []  # overrides implied by --quick
    if args.quick:
        args.out_dir = args.out_dir or tempfile.mkdtemp(prefix="cifar_study_quick_")
        args.preset = ["train.epochs=1", "data.options.max_per_class=50"]
    args.out_dir = args.out_dir or "runs/cifar_study"
    args.results = args.results or (str(Path(args.out_dir) / "results") if args.quick else "docs/results")
    args.doc = args.doc or (str(Path(args.out_dir) / "results.md") if args.quick else "docs/results.md")
    args.readme = args.readme or (None if args.quick else "README.md")
    args.n_examples = args.n_examples or (200 if args.quick else 1000)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    study = Study(args)
    if args.plan:
        steps = study.pending()
        for kind, job in steps:
            print("robustlab " + shlex.join(study.train_command(job) if kind == "train" else study.eval_command(job)))
        print(f"{len(steps)} steps, estimated {eta(study.cost, steps, {'epoch': [0.0, 0.0], 'eval': [0.0, 0.0]})} "
              f"on 2 idle cores (prior: {PRIOR_S['epoch']:.0f} s per PGD-AT epoch, {PRIOR_S['eval']:.0f} s per evaluation)")
        return
    if not args.report:
        study.run()
    table = write_results(study)
    print(table)


if __name__ == "__main__":
    main()
