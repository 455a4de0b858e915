"""Never overwrite what is not ours: ``eval --out`` guards, record identity of outside models, the record lock (issue
20, item 1)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from outside import eval_args, write_model

from robustlab.cli import main
from robustlab.errors import UserError
from robustlab.evaluate.output import check_output
from robustlab.evaluate.state import EvalState


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("robustlab: error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture()
def model(tmp_path: Path) -> tuple[Path, Path]:
    return write_model(tmp_path / "team")


@pytest.mark.parametrize("victim", ["model_file", "weights", "user_json", "state_sibling", "lock_sibling", "folder"])
def test_eval_out_at_something_not_ours_exits_2_and_leaves_it_byte_identical(
    tmp_path: Path, model: tuple[Path, Path], capsys: pytest.CaptureFixture[str], victim: str
) -> None:
    model_file, weights = model
    out = tmp_path / "result.json"
    if victim == "model_file":
        out = model_file  # a user's .py file
    elif victim == "weights":
        out = weights  # the very weights being evaluated
    elif victim == "user_json":
        out.write_text('{"my": "notes"}\n')
    elif victim == "state_sibling":
        (tmp_path / "result.state.json").write_text('{"not": "a state"}\n')
    elif victim == "lock_sibling":
        (tmp_path / "result.lock").write_text("my lock-picking notes, not a pid\n")
    else:
        out = tmp_path / "folder.json"
        out.mkdir()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code = main(eval_args(model_file, weights, "--out", str(out)))
    err = capsys.readouterr().err
    assert code == 2
    line = _one_error_line(err)
    assert "--out" in line
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # byte-identical, and no state, lock or record file appeared


def test_eval_out_over_its_own_record_reruns_and_resumes(tmp_path: Path, model: tuple[Path, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert main(eval_args(*model, "--out", str(out))) == 0
    first = json.loads(out.read_text())
    assert main(eval_args(*model, "--out", str(out))) == 0  # its own record and state: accepted
    assert json.loads(out.read_text())["per_sample"] == first["per_sample"]


def test_check_output_accepts_only_robustlab_files(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    check_output(out)  # nothing there yet
    out.write_text(json.dumps({"robustlab_version": "0", "attacks": {}, "clean_acc": 0.5}))
    EvalState.new({}, 2, 2, ["fgsm"]).save(tmp_path / "r.state.json")
    (tmp_path / "r.lock").write_text("1234\n")
    check_output(out)
    (tmp_path / "r.lock").write_text("")
    check_output(out)
    with pytest.raises(UserError, match=r"must be a \.json record path"):
        check_output(tmp_path / "r.pt")
    for text in ("[1, 2]", json.dumps({"fingerprint": {}}), "torn {"):
        (tmp_path / "r.state.json").write_text(text)
        with pytest.raises(UserError, match="not a robustlab evaluation state"):
            check_output(out)
    out.write_text(json.dumps({"robustlab_version": None}))
    with pytest.raises(UserError, match="not a robustlab evaluation record"):
        check_output(out)


def test_two_outside_models_with_the_same_file_name_keep_two_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    a = write_model(tmp_path / "teamA", seed=0)
    b = write_model(tmp_path / "teamB", seed=1)  # same file name net.py and factory build, other weights
    assert main(eval_args(*a)) == 0
    assert main(eval_args(*b)) == 0
    out = capsys.readouterr().out
    assert "starting fresh" not in out  # the second never replaced the first's finished record
    records = sorted((tmp_path / "runs" / "eval").glob("net_build_*/*.json"))
    records = [r for r in records if not r.name.endswith(".state.json")]
    assert len(records) == 2 and records[0].parent != records[1].parent
    sources = {json.loads(r.read_text())["model_source"]["weights"] for r in records}
    assert sources == {str(a[1]), str(b[1])}


def test_outside_evaluations_take_the_record_lock(tmp_path: Path, model: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    fd = os.open(tmp_path / "r.lock", os.O_RDWR | os.O_CREAT)  # another evaluation holding the lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        assert main(eval_args(*model, "--out", str(out))) == 2
        assert "in use by process 4242" in _one_error_line(capsys.readouterr().err)
        assert not out.exists() and not (tmp_path / "r.state.json").exists()
    finally:
        os.close(fd)
    assert main(eval_args(*model, "--out", str(out))) == 0


GATE = """

import os
import time


def gate(x, z):
    \"\"\"With GATE set, the first 16-image forward (evaluate_model's probe, under the record's lock) waits for
    GATE.go.\"\"\"
    if x.shape[0] == 16 and os.environ.get("GATE") and not os.path.exists(os.environ["GATE"] + ".started"):
        open(os.environ["GATE"] + ".started", "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(os.environ["GATE"] + ".go") and time.monotonic() < deadline:
            time.sleep(0.02)
    return z
"""


def _wait_for(path: Path, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), child.communicate()


def test_two_outside_evaluations_at_once_on_one_output_one_is_refused(
    tmp_path: Path, model: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    """Two real evaluations of one record at once: the second, started while the first evaluates, is refused."""
    model_file, weights = model
    model_file.write_text(model_file.read_text().replace("return z", "return gate(x, z)") + GATE)
    out, gate = tmp_path / "r.json", tmp_path / "gate"
    argv = eval_args(model_file, weights, "--out", str(out))
    first = subprocess.Popen([sys.executable, "-m", "robustlab", *argv], env={**os.environ, "GATE": str(gate)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(Path(f"{gate}.started"), first)  # the first holds the lock and is evaluating
        assert main(argv) == 2
        assert f"in use by process {first.pid}" in _one_error_line(capsys.readouterr().err)
    finally:
        Path(f"{gate}.go").touch()
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert f"record written to {out}" in stdout and json.loads(out.read_text())["n_examples"] == 16
