"""Kill -9 and Ctrl-C trials of ``robustlab train``, ``finetune``, ``eval``, ``eval --verify`` and ``study run`` on
digits, compared with uninterrupted runs.

Each trial runs one command in a forked child (no interpreter start-up per run) and kills it with
SIGKILL (or interrupts it with SIGINT, a Ctrl-C, which must end in exit code 130), either after a seeded random
delay or inside a chosen write (``ROBUSTLAB_FAULT=<site>:<n>``,
:mod:`robustlab.faults`: a checkpoint, an atomic file or a metrics line). It reruns the same
command until it exits 0 (each rerun may be killed again, at most ``max_kills`` times per trial) and
then compares with the uninterrupted reference: every tensor of ``last``/``best`` checkpoints
bit-identical (CPU), the metrics log equal record for record (times aside: nothing missing or
repeated), evaluation verdicts identical. Every checkpoint, JSON file and log line left is read back;
one that does not load counts as a corrupt file. Shared by ``tests/test_faults.py`` and
``benchmarks/fault_trials.py``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sklearn.datasets  # noqa: F401 - the slow imports happen once here, not in every forked child
import torch
import torch._dynamo  # noqa: F401 - what the first optimiser imports
import torch.utils.tensorboard  # noqa: F401

import robustlab.evaluate  # noqa: F401 - likewise
import robustlab.train.finetune  # noqa: F401
from robustlab.cli import main
from robustlab.faults import ENV
from robustlab.runs.checkpoint import load_checkpoint

TINY = [
    "--quiet", "model.options={width: 8}", "method.attack.steps=2", "data.eval_examples=64", "train.eval_pgd_steps=2",
    "train.epochs=2", "data.batch_size=256", "train.log_every=2",
]
SITES = {"train": ("checkpoint", "metrics", "atomic"), "finetune": ("checkpoint", "metrics", "atomic"),
         "eval": ("atomic",), "verify": ("atomic",), "study": ("checkpoint", "metrics", "atomic")}
EVAL = ["--attacks", "fgsm,pgd-3", "--batch-size", "16", "--no-checks"]
STUDY = """title: fault trial
seeds: [0]
overrides: [train.epochs=2, method.attack.steps=2, data.eval_examples=64, train.eval_pgd_steps=2, data.batch_size=256,
            "model.options={{width: 8}}"]
evaluation: {{attacks: [fgsm, pgd-3], n_examples: 64, batch_size: 32, checks: false}}
rows:
  - {{label: pgd_at, config: digits_pgd_at}}
outputs: {{runs: {folder}/runs, results: {folder}/results, page: {folder}/page.md}}
"""
RECORD_KEYS = ("per_sample", "clean_acc", "robust_acc", "flags", "verify")
MAX_PASS = {"checkpoint": 4, "metrics": 7, "atomic": 6}
INTERRUPT_GRACE_S = 30.0  # a Ctrl-C'd command must have stopped by then


@dataclass
class Job:
    """One command: ``kind`` (train, finetune, eval) with its arguments, given the trial folder."""

    kind: str
    source: Path | None = None  # the trained run that finetune starts from and eval evaluates

    def argv(self, folder: Path) -> list[str]:
        if self.kind == "train":
            return ["train", "digits_pgd_at", f"out_dir={folder}", "name=run", *TINY]
        if self.kind == "finetune":
            return ["finetune", "digits_finetune_pgd_at", "--from", str(self.source), "--probe-examples", "32",
                    f"out_dir={folder}", "name=run", *TINY]
        if self.kind == "study":
            spec = folder / "study.yaml"  # its outputs lie beside it
            folder.mkdir(parents=True, exist_ok=True)
            spec.write_text(STUDY.format(folder=folder))
            return ["study", "run", str(spec)]
        if self.kind == "verify":  # the full AutoAttack on 6 survivors, with its own resumable state
            return ["eval", str(self.source), *EVAL, "--n-examples", "48", "--verify", "6",
                    "--out", str(folder / "eval.json")]
        return ["eval", str(self.source), *EVAL, "--n-examples", "96", "--out", str(folder / "eval.json")]


@dataclass
class Tally:
    """What the trials did and found."""

    trials: int = 0
    kills: int = 0
    resumes: int = 0
    mismatches: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    temp_files_left: int = 0
    interrupts: int = 0  # Ctrl-C (SIGINT) stops, each ended in exit code 130
    kill_places: dict[str, int] = field(default_factory=dict)  # site of each kill, or "timer"

    def add(self, other: "Tally") -> None:
        self.trials += other.trials
        self.kills += other.kills
        self.resumes += other.resumes
        self.mismatches += other.mismatches
        self.corrupt += other.corrupt
        self.temp_files_left += other.temp_files_left
        self.interrupts += other.interrupts
        for place, count in other.kill_places.items():
            self.kill_places[place] = self.kill_places.get(place, 0) + count


def run_child(argv: list[str], fault: str | None = None, kill_after: float | None = None,
              stop: int = signal.SIGKILL) -> int:
    """Run ``robustlab.cli.main(argv)`` in a forked child; its exit code (-9 when SIGKILLed, 130 after a Ctrl-C)."""
    return wait_child(start_child(argv, fault), kill_after, stop)


def start_child(argv: list[str], fault: str | None = None) -> int:
    """Fork a child running ``robustlab.cli.main(argv)`` (output discarded); its pid."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's stack
        code = 1
        try:
            if fault:
                os.environ[ENV] = fault
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            code = main(argv)
        finally:
            os._exit(code)
    return pid


def wait_child(pid: int, kill_after: float | None = None, stop: int = signal.SIGKILL) -> int:
    """Wait for a child (send it ``stop`` after ``kill_after`` seconds); its exit code, -9 when killed.

    A child that outlives a SIGINT by ``INTERRUPT_GRACE_S`` is killed, and its exit code (-9) reported as such."""
    deadline = None if kill_after is None else time.monotonic() + kill_after
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() >= deadline:
            os.kill(pid, stop)
            deadline = None if stop == signal.SIGKILL else time.monotonic() + INTERRUPT_GRACE_S
            stop = signal.SIGKILL
        time.sleep(0.005)


def reference(job: Job, folder: Path) -> float:
    """Run ``job`` uninterrupted in ``folder``; its wall time in seconds."""
    started = time.monotonic()
    code = run_child(job.argv(folder))
    if code != 0:
        raise RuntimeError(f"reference {job.kind} run failed with exit code {code}")
    return time.monotonic() - started


def trial(job: Job, folder: Path, ref_folder: Path, ref_seconds: float, seed: int, *,
          first_fault: str | None = None, max_kills: int = 2, interrupt: bool = False) -> Tally:
    """One seeded trial of ``job`` in ``folder``; ``first_fault`` fixes the first attempt's kill site; ``interrupt``:
    timed stops are Ctrl-C (SIGINT, exit code 130 expected) instead of SIGKILL."""
    rng = random.Random(seed)
    tally = Tally(trials=1)
    attempts = 0
    while True:
        fault, delay = (first_fault, None) if attempts == 0 and first_fault else _plan(rng, job.kind, ref_seconds)
        if interrupt and (fault is not None or attempts == 0):  # a Ctrl-C comes at a moment, the first one early
            fault, delay = None, rng.uniform(0.05, 0.8 if attempts == 0 else 1.1) * ref_seconds
        if tally.kills + tally.interrupts >= max_kills or (attempts and rng.random() < 0.4):
            fault, delay = None, None
        code = run_child(job.argv(folder), fault, delay, signal.SIGINT if interrupt else signal.SIGKILL)
        attempts += 1
        if code == -signal.SIGKILL:
            tally.kills += 1
            place = fault.split(":")[0] if fault else "timer"
            tally.kill_places[place] = tally.kill_places.get(place, 0) + 1
            continue
        if code == 130 and interrupt:
            tally.interrupts += 1
            tally.kill_places["ctrl-c"] = tally.kill_places.get("ctrl-c", 0) + 1
            continue
        if code != 0:
            tally.mismatches.append(f"{job.kind} seed {seed}: exit code {code} after {tally.kills} kills")
            break
        break
    tally.resumes = attempts - 1
    tally.mismatches += compare(job.kind, folder, ref_folder, f"{job.kind} seed {seed}")
    tally.corrupt += corrupt_files(folder)
    tally.temp_files_left += len(list(folder.rglob("*.tmp")))
    return tally


def _plan(rng: random.Random, kind: str, ref_seconds: float) -> tuple[str | None, float | None]:
    """A kill inside a write (site:n) or after a random delay, one or the other by coin."""
    if rng.random() < 0.5:
        site = rng.choice(SITES[kind])
        return f"{site}:{rng.randint(1, MAX_PASS[site])}", None
    return None, rng.uniform(0.02, 1.1) * ref_seconds


def compare(kind: str, folder: Path, ref: Path, label: str) -> list[str]:
    """How the finished trial differs from the reference (empty: identical)."""
    if kind in ("eval", "verify"):
        return _compare_records(folder / "eval.json", ref / "eval.json", f"{label}: eval record")
    if kind == "study":
        found = []
        for name in sorted(p.name for p in (ref / "results").glob("*.json")):
            found += _compare_records(folder / "results" / name, ref / "results" / name,
                                      f"{label}: study record {name}")
        if not (folder / "page.md").is_file():
            found.append(f"{label}: the study page is missing")
        run = next(p.name for p in (ref / "runs").iterdir() if (p / "config.yaml").is_file())
        return found + compare_runs(folder / "runs" / run, ref / "runs" / run, label)
    return compare_runs(folder / "run", ref / "run", label)


def _timeless(value: Any) -> Any:
    """``value`` without its wall times (``time_s`` keys, at any depth)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "time_s"}
    return value


def _compare_records(got_path: Path, want_path: Path, label: str) -> list[str]:
    got, want = (_timeless(json.loads(p.read_text())) for p in (got_path, want_path))
    return [f"{label} {k} differs" for k in RECORD_KEYS if got.get(k) != want.get(k)]


def compare_runs(got: Path, want: Path, label: str) -> list[str]:
    """How a run folder differs from the reference run folder: checkpoint tensors, the metrics log."""
    found = []
    for name in ("last", "best"):
        mine, _ = load_checkpoint(got / "checkpoints" / f"{name}.safetensors")
        theirs, _ = load_checkpoint(want / "checkpoints" / f"{name}.safetensors")
        if mine.keys() != theirs.keys() or not all(torch.equal(mine[k], theirs[k]) for k in theirs):
            found.append(f"{label}: {name} checkpoint tensors differ")
    if _records(got) != _records(want):
        found.append(f"{label}: metrics log differs (epochs {_epochs(got)} vs {_epochs(want)})")
    return found


def _records(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]


def _epochs(folder: Path) -> list[int]:
    return [r["epoch"] for r in _records(folder) if r["kind"] == "epoch"]


def corrupt_files(folder: Path) -> list[str]:
    """Files a reader would choke on: checkpoints that do not load, JSON that does not parse, torn log lines."""
    bad = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.endswith(".tmp"):
            continue
        try:
            if path.suffix == ".safetensors":
                load_checkpoint(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".jsonl":
                [json.loads(line) for line in path.read_text().splitlines()]
        except Exception:  # noqa: BLE001 - any failure to read back is what we count
            bad.append(str(path))
    return bad


def run_trials(work: Path, trials: int, seed: int = 0, kinds: tuple[str, ...] = ("train", "finetune", "eval")) -> Tally:
    """References, then ``trials`` seeded trials cycling through ``kinds``; each trial's folder is removed after."""
    refs: dict[str, tuple[Path, float]] = {}
    source = work / "ref_train" / "run"
    for kind in ("train", *[k for k in kinds if k != "train"]):
        folder = work / f"ref_{kind}"
        refs[kind] = (folder, reference(Job(kind, source), folder))
    tally = Tally()
    for i in range(trials):
        kind = kinds[i % len(kinds)]
        folder = work / f"trial_{i}"
        ref_folder, seconds = refs[kind]
        tally.add(trial(Job(kind, source), folder, ref_folder, seconds, seed * 100_003 + i))
        shutil.rmtree(folder, ignore_errors=True)
    return tally
