"""The findings of issue 12, one test each: run names, torn logs, split classes, read-only folders,
the run-folder lock, and legal-but-nonsense values."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import tiny_config

from robustlab.cli import main
from robustlab.config import build_config
from robustlab.data import load_dataset
from robustlab.errors import UserError
from robustlab.evaluate.suite import parse_attack_name
from robustlab.runs.lock import LOCK_NAME, RunLock
from robustlab.runs.metrics import read_metrics
from robustlab.train import Trainer, train

SRC = Path(__file__).resolve().parents[1] / "src"


def _quiet(_: str) -> None:
    pass


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_config(tmp_path_factory.mktemp("runs"), "done", **{"train.epochs": 1})
    train(cfg, log=_quiet)
    return cfg.run_dir


# ------------------------------------------------------------------------------------------ run names


@pytest.mark.parametrize("name", ["..", ".", "a/..", "..\\x", "x\0y"])
def test_a_run_name_must_stay_inside_out_dir(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError, match="name must be a folder name inside out_dir"):
        build_config({}, [f"out_dir={tmp_path / 'out'}", f"name={name}"])


def test_train_named_dotdot_writes_nothing_outside_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, err = _cli(["train", "digits_pgd_at", f"out_dir={out}", "name=..", "--quiet"], capsys)
    assert code == 2 and "name must be" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ torn metrics log


def test_resume_after_a_torn_metrics_line_completes_with_each_epoch_once(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "torn")

    def stop(epoch: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, log=_quiet, after_epoch=stop)
    with (cfg.run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"kind": "step", "step": 9, "lo')  # what a kill inside a write leaves
    train(cfg, log=_quiet)
    assert [r["epoch"] for r in read_metrics(cfg.run_dir, "epoch")] == [1, 2]
    assert all(line.startswith("{") and line.endswith("}")
               for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines())


# ------------------------------------------------------------------------------------------ classes across splits


def _npz(path: Path, train_labels: list[int], test_labels: list[int]) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (len(train_labels), 8, 8), dtype=np.uint8),
             y_train=np.array(train_labels), x_test=rng.integers(0, 256, (len(test_labels), 8, 8), dtype=np.uint8),
             y_test=np.array(test_labels))
    return path


def test_npz_classes_are_counted_over_all_splits(tmp_path: Path) -> None:
    path = _npz(tmp_path / "set.npz", [0, 1, 2, 3, 4, 0], [7, 1])
    assert (load_dataset("npz", "train", root=path).num_classes == load_dataset("npz", "test", root=path).num_classes
            == 8)
    folder = tmp_path / "folder"
    folder.mkdir()
    for split, labels in (("train", [0, 1, 2]), ("test", [5, 0])):
        np.savez(folder / f"{split}.npz", x=np.zeros((len(labels), 8, 8), np.uint8), y=np.array(labels))
    assert load_dataset("npz", "train", root=folder).num_classes == 6


def test_training_on_an_npz_whose_test_labels_exceed_train_labels(tmp_path: Path) -> None:
    path = _npz(tmp_path / "set.npz", [k % 5 for k in range(32)], [7, 1, 2, 3])
    cfg = tiny_config(tmp_path, "npz",
                      **{"data.name": "npz", "data.root": str(path), "train.epochs": 1, "data.batch_size": 16})
    assert train(cfg, log=_quiet)["epoch"] == 1


def test_splits_with_different_class_lists_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    for split, names in (("train", list("abc")), ("test", list("abcd"))):
        np.savez(folder / f"{split}.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.zeros(4, np.int64),
                 classes=np.array(names))
    with pytest.raises(UserError, match="test split has classes 4"):
        Trainer(tiny_config(tmp_path, "mismatch", **{"data.name": "npz", "data.root": str(folder)}), log=_quiet)


# ------------------------------------------------------------------------------------------ read-only folders


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch):
    """Make a folder read-only. As root chmod does not stop writes, so creating anything below it fails by patch."""

    def apply(root: Path) -> None:
        if os.geteuid() != 0:
            for p in [root, *root.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o555)
            return
        root = root.resolve()

        def denied(path: object) -> None:
            if Path(str(path)).resolve().is_relative_to(root):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))

        real_mkdir, real_open, real_mkstemp = Path.mkdir, os.open, tempfile.mkstemp

        def mkdir(self: Path, *args: object, **kwargs: object) -> None:
            if not self.exists():
                denied(self)
            real_mkdir(self, *args, **kwargs)

        def os_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
            if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
                denied(path)
            return real_open(path, flags, *args, **kwargs)

        def mkstemp(*args: object, dir: object = None, **kwargs: object) -> tuple[int, str]:
            denied(Path(str(dir)) / "x")
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)

    yield apply


def test_train_into_a_read_only_out_dir_is_one_line_exit_2(tmp_path: Path, read_only,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    read_only(out)
    code, err = _cli(["train", "digits_pgd_at", f"out_dir={out}", "--quiet", "train.epochs=1"], capsys)
    assert code == 2 and err.startswith("robustlab: error: cannot write") and err.count("\n") == 1


def test_eval_of_a_read_only_run_folder_is_one_line_exit_2(
    one_epoch_run: Path, read_only, capsys: pytest.CaptureFixture[str]
) -> None:
    read_only(one_epoch_run)
    try:
        code, err = _cli(["eval", str(one_epoch_run), "--attacks", "fgsm", "--n-examples", "8", "--no-checks"], capsys)
    finally:
        if os.geteuid() != 0:
            for p in [one_epoch_run, *one_epoch_run.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o755)
    assert code == 2 and "cannot write" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------ the run-folder lock

HOLD = ("import sys, time; from robustlab.runs.lock import RunLock; RunLock.for_run(sys.argv[1]).acquire('x'); "
        "print('held', flush=True); time.sleep(60)")


def test_a_second_train_on_a_busy_run_folder_is_refused_naming_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(SRC)})
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = _cli(["train", "digits_pgd_at", f"out_dir={tmp_path}", "name=busy", "--quiet"], capsys)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and f"in use by process {holder.pid}" in err and err.count("\n") == 1
    assert not (run_dir / "config.yaml").exists()


def test_two_trains_started_at_once_on_one_folder_run_once(tmp_path: Path) -> None:
    from faults import Job, start_child, wait_child

    argv = Job("train").argv(tmp_path)
    codes = sorted(wait_child(pid) for pid in [start_child(argv), start_child(argv)])
    assert codes == [0, 2]
    assert [r["epoch"] for r in read_metrics(tmp_path / "run", "epoch")] == [1, 2]


def test_a_stale_lock_is_taken_over(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    cfg = tiny_config(tmp_path, "stale", **{"train.epochs": 1})
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / LOCK_NAME).write_text(gone.stdout)
    messages: list[str] = []
    train(cfg, log=messages.append)
    assert f"took over the lock of process {int(gone.stdout)}, which is gone" in messages
    assert (cfg.run_dir / LOCK_NAME).read_text() == ""  # released at the end


def test_the_lock_is_shared_within_a_process_and_released_by_the_last_holder(tmp_path: Path) -> None:
    first, second = RunLock.for_run(tmp_path), RunLock.for_run(tmp_path)
    first.acquire("run")
    second.acquire("run")
    first.release()
    probe = [sys.executable, "-c",
             "import sys; from robustlab.runs.lock import RunLock; RunLock.for_run(sys.argv[1]).acquire('run folder')",
             str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    assert "in use by process" in subprocess.run(probe, capture_output=True, text=True, env=env).stderr
    second.release()
    assert subprocess.run(probe, capture_output=True, text=True, env=env).returncode == 0


# ------------------------------------------------------------------------------------------ nonsense values


@pytest.mark.parametrize("override, needle", [
    ("method.attack.eps=2", "above 1 for linf"),
    ("method.attack.steps=0", "train on clean inputs"),
    ("optim.momentum=1", "must be below 1"),
    ("optim.grad_clip=-1", "flips the gradient"),
    ("optim.lr=.nan", "finite number"),
    ("method.attack.eps=.inf", "finite number"),
])
def test_nonsense_training_values_are_refused(override: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        build_config({}, [override])


def test_l2_budgets_above_1_and_natural_training_without_steps_are_fine() -> None:
    build_config({}, ["method.attack.norm=l2", "method.attack.eps=2"])
    build_config({}, ["method.name=natural", "method.attack.steps=0"])


def test_a_step_larger_than_eps_is_a_warning(tmp_path: Path) -> None:
    messages: list[str] = []
    Trainer(tiny_config(tmp_path, "warn", **{"method.attack.step_size": 0.3}), log=messages.append)
    assert any(m.startswith("warning: method.attack step size 0.3 is larger than eps 0.1") for m in messages)


def test_pgd_with_zero_steps_is_refused() -> None:
    with pytest.raises(UserError, match="runs no steps"):
        parse_attack_name("pgd-0")


def test_counts_are_bounded_on_both_sides_of_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 33: pgd-99999999999999999999 and --restarts 999999999999 ran until killed; the limits refuse them
    in one line, and the limit itself is allowed."""
    from outside import eval_args, write_model

    from robustlab.rules import MAX_RESTARTS, MAX_STEPS

    assert parse_attack_name(f"cw-{MAX_STEPS}") == ("cw", MAX_STEPS)
    for name in (f"pgd-{MAX_STEPS + 1}", "pgd-99999999999999999999"):
        with pytest.raises(UserError, match="above the limit of 100,000"):
            parse_attack_name(name)
    args = eval_args(*write_model(tmp_path / "m"), "--out", str(tmp_path / "r.json"), n=2, attacks="fgsm")
    assert main([*args, "--restarts", str(MAX_RESTARTS + 1)]) == 2
    assert "--restarts=1001 is above the limit of 1,000" in capsys.readouterr().err
    assert main([*args, "--restarts", str(MAX_RESTARTS)]) == 0


def test_eval_eps_above_1_is_refused(one_epoch_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(["eval", str(one_epoch_run), "--eps", "2", "--attacks", "fgsm"], capsys)
    assert code == 2 and "eps=2 is above 1 for linf" in err


def test_an_empty_config_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    code, err = _cli(["train", str(empty), f"out_dir={tmp_path}"], capsys)
    assert code == 2 and "is empty" in err


def test_a_finetuning_config_given_to_train_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(["train", "digits_finetune_pgd_at", f"out_dir={tmp_path}"], capsys)
    assert code == 2 and "robustlab finetune digits_finetune_pgd_at --from RUN" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["fifo", "symlink", "folder"])
def test_the_one_atomic_write_never_replaces_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    """Issue 33: temp file + os.replace turned a device node (``/dev/null`` as root), a FIFO or a symlink into a
    regular file. Every writer goes through atomic_fill, so it refuses them there, before writing anything; the
    CLI says so in one line (export here)."""
    import json
    import stat

    from robustlab.atomic import atomic_write_text

    target, outside = tmp_path / "out.json", tmp_path / "theirs.txt"
    outside.write_text("not ours")
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        target.symlink_to(outside)
    else:
        target.mkdir()
    with pytest.raises(UserError, match="not a regular file"):
        atomic_write_text(target, "new")
    record = tmp_path / "r.json"
    record.write_text(json.dumps({"robustlab_version": "0.1.0", "dataset": "digits", "n_examples": 1, "eps": 0.1,
                                  "norm": "linf", "eps_label": "0.1", "clean_acc": 1.0, "robust_acc": 1.0,
                                  "attacks": {"fgsm": {"robust_acc": 1.0}}, "flags": [],
                                  "per_sample": {"clean": [1], "broken_by": {"fgsm": [-1]}}}))
    assert main(["export", str(record), "--robustbench", "--out", str(target)]) == 2
    assert outside.read_text() == "not ours" and list(tmp_path.glob(".*.tmp")) == []
    mode = os.lstat(target).st_mode
    assert {"fifo": stat.S_ISFIFO, "symlink": stat.S_ISLNK, "folder": stat.S_ISDIR}[kind](mode)
