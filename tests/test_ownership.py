"""Issue 33, item 1: every output path a command writes is claimed first (absent or robustlab's own, else one line,
exit 2, the file left byte-identical), and side files are never taken for records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustlab.cli import main
from robustlab.errors import UserError
from robustlab.ownership import MARK, PAGE, PLOT, claim
from robustlab.report.compare import load_record
from robustlab.runs.record import record_paths


def _record(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"robustlab_version": "0.1.0", "dataset": "digits", "n_examples": 1, "eps": 0.1,
                                "norm": "linf", "eps_label": "0.1", "clean_acc": 1.0, "robust_acc": 1.0,
                                "attacks": {"fgsm": {"robust_acc": 1.0}}, "flags": [],
                                "per_sample": {"clean": [1], "broken_by": {"fgsm": [-1]}}}))
    return path


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def test_export_never_overwrites_the_record_or_a_users_file(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    record = _record(tmp_path / "run" / "eval" / "fgsm.json")
    before = record.read_bytes()
    code, err = _cli(["export", str(record), "--robustbench", "--out", str(record)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "not a RobustBench entry robustlab exported" in err
    assert record.read_bytes() == before
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    assert _cli(["export", str(record), "--robustbench", "--out", str(notes)], capsys)[0] == 2
    assert notes.read_text() == '{"mine": 1}'
    # robustlab's own export is replaced, and the default one beside the record is not taken for a record
    assert _cli(["export", str(record), "--robustbench", "--out", str(tmp_path / "entry.json")], capsys)[0] == 0
    assert _cli(["export", str(record), "--robustbench", "--out", str(tmp_path / "entry.json")], capsys)[0] == 0
    assert _cli(["export", str(tmp_path / "run"), "--robustbench"], capsys)[0] == 0
    assert (tmp_path / "run" / "eval" / "fgsm.robustbench.json").is_file()
    assert _cli(["export", str(tmp_path / "run"), "--robustbench"], capsys)[0] == 0


def test_side_files_are_never_counted_as_records(tmp_path: Path) -> None:
    """Before: after --verify or export, a run folder 'holds 2 evaluation records' and report called the side file
    damaged. One lister (runs.record.record_paths) serves report and compare."""
    folder = tmp_path / "run" / "eval"
    record = _record(folder / "fast.json")
    for side in ("fast.state.json", "fast.state.verify.json", "fast.robustbench.json"):
        (folder / side).write_text("{}")
    (folder / "loop.json").symlink_to(folder / "loop.json")  # a symlink loop is skipped, not a traceback
    assert record_paths(folder) == [record]
    assert load_record(tmp_path / "run")["clean_acc"] == 1.0


def test_a_path_under_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = _record(tmp_path / "r.json")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _cli(["export", str(record), "--robustbench", "--out", str(blocker / "sub" / "e.json")], capsys)
    assert code == 2 and f"{blocker} is not a folder" in err and len(err.splitlines()) == 1


def test_train_never_writes_into_a_folder_that_is_not_a_run(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "thesis.tex").write_text("mine")
    code, err = _cli(["train", "digits_natural", f"out_dir={tmp_path}", "name=project", "train.epochs=1"], capsys)
    assert code == 2 and "not a robustlab run (thesis.tex)" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]  # no lock, no config, nothing
    (tmp_path / "afile").write_text("x")
    code, err = _cli(["train", "digits_natural", f"out_dir={tmp_path}", "name=afile"], capsys)
    assert code == 2 and "is not a folder" in err and (tmp_path / "afile").read_text() == "x"


def test_a_killed_run_before_its_config_is_still_ours(tmp_path: Path) -> None:
    from robustlab.runs.folder import claim_run_folder

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".lock").write_text("123\n")
    (run / ".config.yaml.abc.tmp").write_text("half")
    claim_run_folder(run)
    (run / "checkpoints" / "user.bin").write_text("x")
    with pytest.raises(UserError, match="checkpoints"):
        claim_run_folder(run)


def test_eval_refuses_a_users_file_at_the_verification_state(tmp_path: Path) -> None:
    from robustlab.evaluate.output import check_output, verify_state_path

    out = tmp_path / "e.json"
    verify_state_path(out).write_text('{"mine": true}')
    with pytest.raises(UserError, match="not a robustlab verification state"):
        check_output(out)


def test_pages_and_plots_are_recognised_by_their_mark(tmp_path: Path) -> None:
    page, plot = tmp_path / "page.md", tmp_path / "plot.png"
    page.write_text(f"{MARK}\n# results\n")
    claim(page, PAGE, "fix")
    page.write_text("# my notes\n")
    with pytest.raises(UserError, match="not a page robustlab wrote"):
        claim(page, PAGE, "fix")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robustlab.ownership import PNG_METADATA

    fig = plt.figure()
    fig.savefig(plot, metadata=PNG_METADATA)
    claim(plot, PLOT, "fix")
    fig.savefig(plot)  # matplotlib's own Software tag: a user's plot
    plt.close(fig)
    with pytest.raises(UserError, match="not a plot robustlab drew"):
        claim(plot, PLOT, "fix")


def _study_where(folder: Path) -> list[str]:
    return ["--runs", str(folder / "runs"), "--results", str(folder / "results"), "--page", str(folder / "page.md"),
            "--readme", "none"]


@pytest.mark.parametrize("where", ["page.md", "results/digits_pgd_at_s0.metrics.jsonl", "results/timings.json",
                                   "runs/digits_natural_s0/notes.txt"])
def test_a_study_claims_every_output_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          where: str) -> None:
    """The page, the metrics copies, the bookkeeping and the run folders: a user's file at any of them stops
    ``study run`` in one line before the first training, and is left as it was."""
    theirs = tmp_path / where
    theirs.parent.mkdir(parents=True, exist_ok=True)
    theirs.write_text("mine\n")
    code, err = _cli(["study", "run", "digits_small", *_study_where(tmp_path)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and str(theirs.parent if "runs/" in where else theirs) in err
    assert theirs.read_text() == "mine\n"
    assert not (tmp_path / "runs" / "digits_pgd_at_s0").exists()


def test_study_bookkeeping_with_a_non_mapping_entry_is_one_line(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    timings = tmp_path / "results" / "timings.json"
    timings.parent.mkdir(parents=True)
    timings.write_text('{"digits_natural_s0": 3}')
    code, err = _cli(["study", "report", "digits_small", *_study_where(tmp_path)], capsys)
    assert code == 2 and "'digits_natural_s0': 3" in err and len(err.splitlines()) == 1
