"""Progress you can see, work you keep (issue 20, item 4): lines when output is piped, state saved per attack."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import pytest
from faults import run_child
from outside import eval_args, write_model

import robustlab.evaluate.progress as progress_module
from robustlab.cli import main
from robustlab.evaluate.progress import Progress
from robustlab.evaluate.state import EvalState

LINE = "eval: "


def test_piped_evaluation_prints_progress_lines_before_the_first_batch_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(progress_module, "PIPE_INTERVAL_S", 0.0)  # every heartbeat prints
    seen_before_batch_end: list[str] = []
    original = EvalState.save

    def save(self: EvalState, path: Path | None) -> None:
        if self.cursor == 1 and not seen_before_batch_end:  # the first batch has just ended
            seen_before_batch_end.append(capsys.readouterr().err)
        original(self, path)

    monkeypatch.setattr(EvalState, "save", save)
    args = eval_args(*write_model(tmp_path / "m"), "--out", str(tmp_path / "r.json"), "--batch-size", "16", n=16)
    assert main(args) == 0  # capsys: stderr is not a terminal
    lines = [line for line in seen_before_batch_end[0].splitlines() if line.startswith(LINE)]
    assert any(line.startswith("eval: fgsm on batch 1/1:") for line in lines)
    assert any(line.startswith("eval: pgd-3 on batch 1/1: 16 of 32 sample-attacks left") for line in lines)
    assert all("elapsed" in line and "ETA" in line for line in lines)


def test_progress_lines_are_at_most_one_per_interval() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(100, stream=stream, interval=30.0, clock=lambda: now[0])
    progress.begin("pgd-20", 0, 4)
    for t in range(0, 95):  # a heartbeat every second for 94 s
        now[0] = float(t)
        progress.heartbeat()
    now[0] = 95.0
    progress.advance(25)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # at 30, 60 and 90 s
    assert lines[0] == "eval: pgd-20 on batch 1/4: 100 of 100 sample-attacks left, elapsed 0:00:30, ETA unknown"
    now[0] = 125.0
    progress.heartbeat()
    assert stream.getvalue().splitlines()[-1] == ("eval: pgd-20 on batch 1/4: 75 of 100 sample-attacks left, "
                                                  "elapsed 0:02:05, ETA 0:06:15")


def _kill_between_attacks(tmp_path: Path, attacks: str, n: int) -> tuple[dict, dict, EvalState, str]:
    """Reference record, then an evaluation killed inside its 2nd state write (after the 1st attack or member), then the
    rerun."""
    model = write_model(tmp_path / "m")
    ref = tmp_path / "ref.json"
    common = ["--batch-size", str(n), "--eps", "0.03"]
    assert main([*eval_args(*model, "--out", str(ref), n=n, attacks=attacks), *common]) == 0
    out = tmp_path / "r.json"
    args = [*eval_args(*model, "--out", str(out), n=n, attacks=attacks), *common]
    assert run_child(args, fault="atomic:2") == -signal.SIGKILL
    saved = json.loads((tmp_path / "r.state.json").read_text())
    state = EvalState(**{k: v for k, v in saved.items() if k not in ("costs", "digest")})
    return json.loads(ref.read_text()), args, state, str(out)


def test_kill_between_two_attacks_of_one_batch_does_not_repeat_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference, args, state, out = _kill_between_attacks(tmp_path, "fgsm,pgd-3", 16)
    assert (state.cursor, state.attack_cursor) == (0, 1)  # one batch, killed after its first attack
    capsys.readouterr()
    assert main(args) == 0
    assert "resuming evaluation" in capsys.readouterr().out
    record = json.loads(Path(out).read_text())
    assert record["per_sample"] == reference["per_sample"]
    for name in ("fgsm", "pgd-3"):  # costs accumulate across runs: a repeated attack would count twice
        assert record["attacks"][name]["forward_per_sample"] == reference["attacks"][name]["forward_per_sample"]


def test_kill_between_two_members_of_a_group_does_not_repeat_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference, args, state, out = _kill_between_attacks(tmp_path, "apgd-ce-t", 8)
    assert (state.cursor, state.attack_cursor, state.member_cursor) == (0, 0, 1)  # after apgd-ce, before apgd-t
    assert main(args) == 0
    record = json.loads(Path(out).read_text())
    assert record["per_sample"] == reference["per_sample"]
    assert (record["attacks"]["apgd-ce-t"]["forward_per_sample"]
            == reference["attacks"]["apgd-ce-t"]["forward_per_sample"])


def test_automatic_checks_announce_themselves_and_their_cost(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    args = eval_args(*write_model(tmp_path / "m"), "--out", str(tmp_path / "r.json"), n=8)
    args.remove("--no-checks")
    assert main(args) == 0
    out = capsys.readouterr().out
    announce = next(line for line in out.splitlines() if line.startswith("checks: gradient-masking checks"))
    assert ("on 8 probe samples" in announce and "about 170 forward+backward passes" in announce
            and "--no-checks" in announce)
    done = next(line for line in out.splitlines() if line.startswith("checks: done in"))
    assert "forward and" in done and "backward sample passes" in done
    assert out.index(announce) < out.index(done) < out.index("record written")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_not_lines() -> None:
    stream = _Terminal()
    progress = Progress(10, stream=stream, interval=0.0)
    assert progress.bar is not None
    progress.begin("fgsm", 0, 1)
    progress.advance(10)
    assert (progress.bar.desc, progress.bar.n, progress.bar.total) == ("fgsm on batch 1/1", 10, 10)
    progress.close()
    assert "sample-attack" in stream.getvalue() and LINE not in stream.getvalue()
