"""``robustlab study run digits_small`` end to end through the CLI: records, a page whose intervals are those of
``robustlab report --compare`` on the same records, steps skipped when done, changed settings refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robustlab.cli import main
from robustlab.report.compare import format_mean_std

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("digits_natural", "digits_pgd_at", "digits_pgd_at_fsr")


def robustlab(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "robustlab", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _where(folder: Path) -> list[str]:
    return ["--runs", str(folder / "runs"), "--results", str(folder / "results"), "--page", str(folder / "results.md")]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled digits study, run once for this module (3 rows × 2 seeds, about 25 s on 2 loaded cores)."""
    folder = tmp_path_factory.mktemp("digits_small")
    done = robustlab("study", "run", "digits_small", *_where(folder))
    assert done.returncode == 0, done.stderr[-3000:]
    (folder / "stdout.txt").write_text(done.stdout)
    return folder


def test_run_writes_every_record_and_the_page(study: Path) -> None:
    out = (study / "stdout.txt").read_text()
    assert "12 steps to do (6 trainings, 6 evaluations)" in out and "ETA" in out
    records = {f"{r}_s{s}": json.loads((study / "results" / f"{r}_s{s}.json").read_text())
               for r in ROWS for s in (0, 1)}
    assert all(r["n_examples"] == 100 and not r.get("checks_run") for r in records.values())
    assert len({r["data_hash"] for r in records.values()}) == 1  # the same test images for every model
    assert ("adaptive" in records["digits_pgd_at_fsr_s0"]["attacks"]
            and "adaptive" not in records["digits_pgd_at_s0"]["attacks"])
    assert [r["epoch"] for r in records.values()] == [2] * 6
    page = (study / "results.md").read_text()
    assert "(status: complete)" in page and (study / "results" / "plots" / "accuracy.png").is_file()
    clean = [records[f"digits_pgd_at_fsr_s{s}"]["clean_acc"] for s in (0, 1)]
    assert f"| pgd_at+fsr | 2 | {format_mean_std(clean)} |" in page and "## Wall times" in page


@pytest.mark.parametrize("base,method,metric", [("natural", "pgd_at", "worst"), ("pgd_at", "pgd_at+fsr", "worst"),
                                                ("pgd_at", "pgd_at+fsr", "pgd-20"), ("natural", "pgd_at", "pgd-20")])
def test_page_intervals_match_report_compare(study: Path, base: str, method: str, metric: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Every interval on the page is what ``robustlab report --compare`` prints for the same records."""
    names = {"natural": "digits_natural", "pgd_at": "digits_pgd_at", "pgd_at+fsr": "digits_pgd_at_fsr"}
    groups = [",".join(str(study / "results" / f"{names[label]}_s{s}.json") for s in (0, 1))
              for label in (base, method)]
    assert main(["report", "--compare", *groups, "--metric", metric]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split(" | ")
    interval, verdict = row[4], row[5].rstrip(" |")
    assert re.fullmatch(r"[+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]", interval)
    page = (study / "results.md").read_text()
    if metric == "worst":  # the table's last numeric column
        assert f"| {interval} vs {base} |" in [line for line in page.splitlines()
                                               if line.startswith(f"| {method} |")][0]
    assert f"{method} − {base} ({metric}, 2 seeds × 100 images): {interval} points, {verdict}" in page


def test_rerun_skips_finished_steps_and_redoes_only_a_lost_record(study: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A finished study reruns nothing; a deleted record reruns only its evaluation (its training is done)."""
    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    assert main(["study", "run", "digits_small", *_where(copy)]) == 0
    again = capsys.readouterr().out
    assert "steps to do" not in again and "robustlab train" not in again
    page = (copy / "results.md").read_text()
    (copy / "results" / "digits_pgd_at_s1.json").unlink()
    assert main(["study", "run", "digits_small", *_where(copy)]) == 0
    redo = capsys.readouterr().out
    assert "1 steps to do (0 trainings, 1 evaluations)" in redo and "robustlab eval" in redo
    wall = "## Wall times"  # the redone evaluation adds its seconds; every other line is unchanged
    assert (copy / "results.md").read_text().split(wall)[0] == page.split(wall)[0]


def test_changed_setting_for_an_existing_record_is_refused(study: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A record made with 2 epochs and 100 images: asking for 3 epochs, or 50 images, is one line and exit 2."""
    copy = tmp_path / "copy"
    shutil.copytree(study / "results", copy / "results")
    assert main(["study", "run", "digits_small", *_where(copy), "--override", "train.epochs=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert ("digits_natural_s0.json was made with config train.epochs=2, the study now gives 3; restore the setting"
            in err)
    spec = (ROOT / "src" / "robustlab" / "studies" / "digits_small.yaml").read_text().replace("n_examples: 100",
                                                                                              "n_examples: 50")
    (tmp_path / "s.yaml").write_text(spec)
    assert main(["study", "report", str(tmp_path / "s.yaml"), *_where(copy)]) == 2
    assert "was made with n_examples=100, the study now gives 50" in capsys.readouterr().err
    assert not (copy / "runs").exists() and not (copy / "results.md").exists()


def test_an_interrupted_step_stops_the_study_as_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C inside a step's command (the inner CLI returns 130) ends the study with 130 and the resume hint,
    not as a failed step; a failing step is one line naming its command, exit 2."""
    import robustlab.cli as cli

    monkeypatch.setattr(cli, "main", lambda argv: 130)
    assert main(["study", "run", "digits_small", *_where(tmp_path)]) == 130
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err
    monkeypatch.setattr(cli, "main", lambda argv: 2)
    assert main(["study", "run", "digits_small", *_where(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (err.count("\n") == 1 and "step failed: robustlab train digits_natural " in err
            and "rerun the study to resume" in err)
