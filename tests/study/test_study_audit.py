"""A study file's ``audit`` block: one ``robustlab audit`` step per job after its training, its record copied to the
results folder as ``<run>.audit.json``, an ``audit`` column on the page; a study without the block has neither, and a
rerun skips an audit whose copy exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustlab.errors import UserError
from robustlab.evaluate.audit.record import looks_like_audit
from robustlab.study.page import page_text
from robustlab.study.plan import Study
from robustlab.study.spec import load_study

ROOT = Path(__file__).resolve().parents[2]
STUDY = """title: audit study
seeds: [0]
overrides: [train.epochs=1, method.attack.steps=2, data.eval_examples=64, train.eval_pgd_steps=2, data.batch_size=256,
            "model.options={{width: 8}}"]
evaluation: {{attacks: [fgsm], n_examples: 64, batch_size: 32, checks: false}}
rows:
  - {{label: pgd_at, config: digits_pgd_at}}
outputs: {{runs: {folder}/runs, results: {folder}/results, page: {folder}/page.md}}
"""
AUDIT = "audit: {{attacks: [fast], n_images: {n}, inner_points: 99}}\n"


def robustlab(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "robustlab", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _write(folder: Path, name: str, audit: str = "") -> Path:
    path = folder / name
    path.write_text(STUDY.format(folder=folder) + audit)
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-row, one-seed digits study with an audit, run once for this module."""
    folder = tmp_path_factory.mktemp("audit_study")
    done = robustlab("study", "run", str(_write(folder, "study.yaml", AUDIT.format(n=8))))
    assert done.returncode == 0, done.stderr[-3000:]
    (folder / "stdout.txt").write_text(done.stdout)
    return folder


def test_audit_step_copies_its_record_and_the_page_shows_it(study: Path) -> None:
    out = (study / "stdout.txt").read_text()
    assert "3 steps to do (1 trainings, 1 evaluations, 1 audits)" in out
    copy = study / "results" / "digits_pgd_at_s0.audit.json"
    assert looks_like_audit(copy)
    assert copy.read_bytes() == (study / "runs" / "digits_pgd_at_s0" / "audit" / "results.json").read_bytes()
    record = json.loads(copy.read_text())
    assert record["attacks_requested"] == ["fast"] and record["n_images"] == 8 and record["inner_points"] == 99
    page = (study / "page.md").read_text()
    head = next(line for line in page.splitlines() if line.startswith("| configuration |"))
    assert head.endswith("| flags | audit: found, pooled over seeds [95% CI] |")
    row = next(line for line in page.splitlines() if line.startswith("| pgd_at |"))
    fast = record["attacks"]["fast"]
    verdict = "pass" if fast["pass"] else "fail"
    assert f"`fast` {fast['found']}/{record['set_up']} = " in row and f"{verdict} (1 seed) |" in row
    assert "robustlab audit " in page and "--inner-points 99" in page  # the commands it runs


def test_rerun_skips_the_audit_and_redoes_only_a_lost_copy(study: Path) -> None:
    path = study / "study.yaml"
    again = robustlab("study", "run", str(path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "steps to do" not in again.stdout
    copy = study / "results" / "digits_pgd_at_s0.audit.json"
    before = copy.read_bytes()
    copy.unlink()
    assert [s.key for s in Study(load_study(str(path))).pending()] == ["audit:digits_pgd_at_s0"]
    redo = robustlab("study", "run", str(path))
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert "1 steps to do (0 trainings, 0 evaluations, 1 audits)" in redo.stdout
    assert json.loads(copy.read_bytes())["attacks"] == json.loads(before)["attacks"]


def test_study_without_the_block_has_no_audit_step_or_column(study: Path) -> None:
    plain = Study(load_study(str(_write(study, "plain.yaml"))))
    assert plain.spec.audit is None
    assert not any(s.kind == "audit" for s in plain.pending())
    assert not any(path.name.endswith(".audit.json") for path, _ in plain.outputs())
    text, table, _, _ = page_text(plain)
    assert "audit" not in table and table.splitlines()[0].endswith("| flags |") and "| pgd_at | 1 |" in table
    assert "robustlab audit" not in text


def test_changed_audit_settings_are_refused(study: Path) -> None:
    other = Study(load_study(str(_write(study, "more.yaml", AUDIT.format(n=9)))))
    with pytest.raises(UserError, match="n_images=8, the study now gives 9"):
        other.check_records()


@pytest.mark.parametrize("damage", ["{\"audit\": ", "[]", "set_up"])
def test_a_damaged_audit_copy_is_one_line(tmp_path: Path, damage: str) -> None:
    """A cut, a non-object or a copy whose counts are not integers: one UserError line from the one audit reader
    (evaluate.audit.record.read_audit), for the settings check and for the page alike; before, a traceback."""
    study = Study(load_study(str(_write(tmp_path, "s.yaml", AUDIT.format(n=8)))))
    copy = study.audit_path(study.jobs[0])
    copy.parent.mkdir(parents=True)
    if damage == "set_up":
        from robustlab.evaluate.audit.record import TEST

        damage = json.dumps({"audit": TEST, "attacks": {"fast": {"found": "8"}}, "per_image": [], "set_up": 8})
    copy.write_text(damage)
    for read in (study.check_records, lambda: page_text(study)):
        with pytest.raises(UserError, match="is damaged or not a robustlab audit record"):
            read()


@pytest.mark.parametrize("block,message", [("audit: {attack: [fast]}", "did you mean attacks"),
                                           ("audit: {n_images: 0}", "audit.n_images must be a positive integer"),
                                           ("audit: {attacks: [nope]}", "nope")])
def test_bad_audit_block_is_refused(tmp_path: Path, block: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_study(str(_write(tmp_path, "bad.yaml", block + "\n")))
