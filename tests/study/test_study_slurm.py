"""``--executor slurm``: submitit's LocalExecutor runs the same jobs for real; a fake ``sbatch``/``sacct``/``squeue``
on the PATH checks the submitted scripts, their dependencies, and that a failed or preempted step is resubmitted."""

from __future__ import annotations

import json
import re
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from robustlab.cli import main
from robustlab.runs.metrics import read_metrics
from robustlab.study import Options, Study, load_study, run_study
from robustlab.study.slurm import JOBS_FILE, SlurmOptions

pytest.importorskip("submitit")

STEPS = ("train:digits_natural_s0", "eval:digits_natural_s0", "train:digits_finetune_pgd_at_s0",
         "eval:digits_finetune_pgd_at_s0")


def _study_file(folder: Path, finetune: bool = True) -> Path:
    """Natural training, then vanilla fine-tuning from it (adaptive, transfer from the natural run): every kind of
    dependency (source training, own training, transfer source). One seed, one epoch, 20 images."""
    data = {"seeds": [0], "overrides": ["train.epochs=1", "data.eval_examples=20", "train.eval_pgd_steps=2"],
            "outputs": {"runs": str(folder / "runs"), "results": str(folder / "results"),
                        "page": str(folder / "page.md")},
            "evaluation": {"attacks": ["fgsm"], "n_examples": 20, "batch_size": 20, "checks": False},
            "rows": [{"label": "natural", "config": "digits_natural"},
                     {"label": "vanilla", "config": "digits_finetune_pgd_at", "finetune_from": "natural",
                      "base": "natural", "adaptive": True}][: 2 if finetune else 1]}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_submitit_local_executor_runs_every_step_then_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The slurm executor's code path on submitit's LocalExecutor: each step is a job (its own process, logs in the
    study folder), the evaluation after its training; the record and the page appear; a second run submits nothing.
    (Fine-tuning and transfer dependencies: the fake-SLURM test.)"""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    study = Study(load_study(str(_study_file(tmp_path, finetune=False))), Options(readme="none"))
    lines: list[str] = []
    run_study(study, "slurm", SlurmOptions(cluster="local", gpus_per_job=0, time_limit_min=10), log=lines.append)
    jobs = json.loads((tmp_path / "runs" / JOBS_FILE).read_text())
    assert sorted(jobs) == sorted(STEPS[:2]) and all(j["submissions"] == 1 for j in jobs.values())
    assert [line.split(": submitted")[0] for line in lines if "submitted job" in line] == list(STEPS[:2])
    for step in STEPS[:2]:  # each job logged in the study folder
        assert (tmp_path / "runs" / "slurm" / f"{jobs[step]['job_id']}_0_log.out").is_file()
    record = json.loads((tmp_path / "results" / "digits_natural_s0.json").read_text())
    assert record["n_examples"] == 20 and record["processes"] == 1 and record["epoch"] == 1
    assert "(status: complete)" in (tmp_path / "page.md").read_text()
    again: list[str] = []
    run_study(Study(load_study(str(tmp_path / "study.yaml")), Options(readme="none")), "slurm",
              SlurmOptions(cluster="local", gpus_per_job=0), log=again.append)
    assert not any("submitted" in line for line in again)


def test_a_job_with_two_tasks_runs_its_step_as_two_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tasks per job (as two GPUs would give): each step runs as a 2-rank DDP job (gloo on CPU here); rank 0
    alone files the record, which says 2 processes."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    study = Study(load_study(str(_study_file(tmp_path, finetune=False))), Options(readme="none"))
    run_study(study, "slurm", SlurmOptions(cluster="local", gpus_per_job=0, processes_per_job=2), log=lambda _: None)
    record = json.loads((tmp_path / "results" / "digits_natural_s0.json").read_text())
    assert record["processes"] == 2 and record["n_examples"] == 20
    epochs = [r["epoch"] for r in read_metrics(tmp_path / "runs" / "digits_natural_s0", "epoch")]
    assert epochs == [1]  # written once, by rank 0
    timings = json.loads((tmp_path / "results" / "timings.json").read_text())
    assert sorted(timings["digits_natural_s0"]) == ["eval_s", "train_s"]  # filed once per step, by rank 0


FAKE_SBATCH = """#!{python}
import pathlib, shutil, sys
root = pathlib.Path({root!r})
counter = root / "counter"
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
(root / "submitted").mkdir(exist_ok=True)
shutil.copy(sys.argv[-1], root / "submitted" / f"{{n}}.sh")
print(f"Submitted batch job {{n}}")
"""
FAKE_SACCT = """#!{python}
import json, pathlib, sys
states = json.loads((pathlib.Path({root!r}) / "states.json").read_text())
ids = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"]
print("JobID|State|NodeList")
for i in ids:
    print(f"{{i}}|{{states.get(i, 'PENDING')}}|node1")
"""
FAKE_LOG = """#!{python}
import pathlib, sys
with open(pathlib.Path({root!r}) / "{name}.calls", "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\\n")
"""


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """sbatch, sacct, squeue, srun and scancel on the PATH, as small Python scripts keeping their calls in ROOT."""
    root = tmp_path / "slurm"
    (root / "bin").mkdir(parents=True)
    scripts = {"sbatch": FAKE_SBATCH, "sacct": FAKE_SACCT, "squeue": FAKE_LOG, "srun": FAKE_LOG, "scancel": FAKE_LOG}
    for name, text in scripts.items():
        path = root / "bin" / name
        path.write_text(text.format(python=sys.executable, root=str(root), name=name))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    (root / "states.json").write_text("{}")
    monkeypatch.setenv("PATH", f"{root / 'bin'}:{__import__('os').environ['PATH']}")
    return root


def _scripts(root: Path) -> dict[str, dict[str, Any]]:
    """Submitted scripts by step key: their #SBATCH flags and the job id they got."""
    out = {}
    for path in sorted((root / "submitted").glob("*.sh"), key=lambda p: int(p.stem)):
        text = path.read_text()
        flags = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", text, re.M))
        kind, name = flags["job-name"].removeprefix("robustlab-").split("-", 1)
        out[f"{kind}:{name}"] = {"id": path.stem, "flags": flags, "text": text}
    return out


def _states(root: Path, states: dict[str, str]) -> None:
    (root / "states.json").write_text(json.dumps(states))


def test_fake_slurm_scripts_dependencies_and_resubmission(tmp_path: Path, fake_slurm: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    study = _study_file(tmp_path)
    argv = ["study", "run", str(study), "--executor", "slurm", "--partition", "gpu", "--gpus-per-job", "2",
            "--time-limit", "30", "--account", "proj", "--readme", "none"]
    assert main(argv) == 0, capsys.readouterr().err
    scripts = _scripts(fake_slurm)
    assert sorted(scripts) == sorted(STEPS)  # one job per step
    ids = {k: v["id"] for k, v in scripts.items()}
    for key, script in scripts.items():
        flags = script["flags"]
        assert (flags["partition"], flags["gpus-per-node"], flags["time"],
                flags["account"]) == ("gpu", "2", "30", "proj")
        assert flags["output"].startswith(str(tmp_path / "runs" / "slurm") + "/") and flags["nodes"] == "1"
        assert flags["ntasks-per-node"] == "2"  # one DDP rank per GPU
        assert "-m submitit.core._submit" in script["text"] and "srun" in script["text"]
    deps = {k: v["flags"].get("dependency") for k, v in scripts.items()}
    assert deps == {
        "train:digits_natural_s0": None,
        "eval:digits_natural_s0": f"afterok:{ids['train:digits_natural_s0']}",
        "train:digits_finetune_pgd_at_s0": f"afterok:{ids['train:digits_natural_s0']}",
        "eval:digits_finetune_pgd_at_s0": f"afterok:{ids['train:digits_finetune_pgd_at_s0']}:"
                                          f"{ids['train:digits_natural_s0']}",
    }
    jobs_path = tmp_path / "runs" / JOBS_FILE
    assert {k: v["job_id"] for k, v in json.loads(jobs_path.read_text()).items()} == ids
    assert "4 steps queued or running" in capsys.readouterr().out

    # the natural evaluation failed, the rest is queued or running: only that step is resubmitted, once
    _states(fake_slurm, {ids["train:digits_natural_s0"]: "RUNNING", ids["eval:digits_natural_s0"]: "FAILED"})
    assert main(argv) == 0
    after = _scripts(fake_slurm)
    assert len(list((fake_slurm / "submitted").glob("*.sh"))) == 5
    resubmitted = after["eval:digits_natural_s0"]
    assert (resubmitted["id"] == "5"
            and resubmitted["flags"]["dependency"] == f"afterok:{ids['train:digits_natural_s0']}")
    jobs = json.loads(jobs_path.read_text())
    assert jobs["eval:digits_natural_s0"] == {"job_id": "5", "submissions": 2,
                                              "previous": {"job_id": ids["eval:digits_natural_s0"], "state": "FAILED"}}
    assert all(jobs[k]["submissions"] == 1 for k in STEPS if k != "eval:digits_natural_s0")
    assert "left alone" in capsys.readouterr().out

    # all queued or running again: nothing submitted
    _states(fake_slurm, {"5": "PENDING", ids["train:digits_natural_s0"]: "RUNNING"})
    assert main(argv) == 0
    assert len(list((fake_slurm / "submitted").glob("*.sh"))) == 5 and not (fake_slurm / "scancel.calls").exists()

    # the natural training was preempted: it is resubmitted, and the queued jobs waiting on it are cancelled and
    # resubmitted after it (their old dependency can never be met)
    _states(fake_slurm, {ids["train:digits_natural_s0"]: "PREEMPTED", "5": "PENDING"})
    assert main(argv) == 0
    assert len(list((fake_slurm / "submitted").glob("*.sh"))) == 9
    final = _scripts(fake_slurm)
    new_train = final["train:digits_natural_s0"]["id"]
    assert new_train == "6" and final["eval:digits_natural_s0"]["flags"]["dependency"] == f"afterok:{new_train}"
    assert sorted((fake_slurm / "scancel.calls").read_text().split()) == sorted(
        ["5", ids["train:digits_finetune_pgd_at_s0"], ids["eval:digits_finetune_pgd_at_s0"]])
    assert json.loads(jobs_path.read_text())["train:digits_natural_s0"]["previous"]["state"] == "PREEMPTED"


def test_slurm_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "run", str(_study_file(tmp_path)), "--executor", "slurm", "--time-limit", "0"]) == 2
    assert "--time-limit must be a positive integer, got 0" in capsys.readouterr().err


def test_submitit_is_imported_only_by_the_slurm_executor(tmp_path: Path) -> None:
    """The CLI, the study package and a local study run never import submitit."""
    import subprocess

    code = ("import sys; from robustlab.cli import main; import robustlab.study.api; "
            f"assert main(['study', 'plan', {str(_study_file(tmp_path))!r}]) == 0; "
            "assert 'submitit' not in sys.modules, 'submitit imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_slurm_here_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """--executor slurm where there is no srun/sbatch: one line suggesting --executor local, exit 2."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert main(["study", "run", str(_study_file(tmp_path)), "--executor", "slurm", "--readme", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not submit train:digits_natural_s0" in err and "--executor local" in err
