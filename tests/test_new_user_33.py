"""Issue 33's remaining one-line answers: seeds out of range, a study file or README that is not UTF-8, README
markers in reverse order (each a traceback before, or found only after the study trained)."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustlab.cli import main
from robustlab.config import build_config
from robustlab.errors import UserError
from robustlab.rules import MAX_SEED


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


def test_seeds_outside_the_range_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``seed=2**64`` ended in "Overflow when unpacking long long"; the limit is numpy's seed range."""
    build_config({}, [f"seed={MAX_SEED}"])
    for seed in (MAX_SEED + 1, -1, 2**64):
        with pytest.raises(UserError, match=f"seed={seed} is outside 0..4,294,967,295"):
            build_config({}, [f"seed={seed}"])
    code, err = _cli(["train", "digits_natural", f"out_dir={tmp_path}", f"seed={2**64}"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and not any(tmp_path.iterdir())
    code, err = _cli(["eval", "--model", "nope.py:build", "--seed", str(2**64), "--data", "digits"], capsys)
    assert code == 2 and len(err.splitlines()) == 1


def test_a_study_file_that_is_not_utf8_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "s.yaml"
    study.write_bytes(b'title: "\xff\xfe"\n')
    code, err = _cli(["study", "plan", str(study)], capsys)
    assert code == 2 and err == f"robustlab: error: study file {study} is not a text (UTF-8) file; pass a YAML file"


@pytest.mark.parametrize("content", [
    b"# project\n<!-- end of the study table: digits_small -->\n\n<!-- study table: digits_small -->\n",
    b"\xff\xfe not text",
])
def test_a_readme_robustlab_cannot_update_stops_the_study_before_it_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes,
) -> None:
    """README markers in reverse order ended in a traceback when the page was written, after the whole study."""
    readme = tmp_path / "README.md"
    readme.write_bytes(content)
    code, err = _cli(["study", "run", "digits_small", "--runs", str(tmp_path / "runs"), "--results",
                      str(tmp_path / "res"), "--page", str(tmp_path / "page.md"), "--readme", str(readme)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "not a README robustlab can update" in err
    assert readme.read_bytes() == content and not (tmp_path / "runs").exists()


MODELS = '''
import torch
from torch import nn


class Pixels(nn.Module):
    """No parameters: the first 10 pixels, scaled, are the logits."""

    def forward(self, x):
        return x.flatten(1)[:, :10] * 3


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def free():
    return Pixels()


def on_meta():
    return Linear().to("meta")
'''


def test_a_parameter_free_model_needs_no_weights_and_a_meta_model_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A parameter-free model could not be evaluated at all ("--model needs --weights"); a model built on the meta
    device ended in a traceback."""
    (tmp_path / "net.py").write_text(MODELS)
    common = ["--data", "digits", "--attacks", "fgsm", "--n-examples", "8", "--no-checks"]
    code, err = _cli(["eval", "--model", f"{tmp_path / 'net.py'}:free", *common, "--out", str(tmp_path / "f.json")],
                     capsys)
    assert code == 0, err
    code, err = _cli(["eval", "--model", f"{tmp_path / 'net.py'}:on_meta", *common, "--weights", "w.pt", "--out",
                      str(tmp_path / "m.json")], capsys)
    assert code == 2 and "builds a model on the meta device (fc.weight holds no data)" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("field, value", [("flags", [3]), ("attack_params", {"fgsm": 1}), ("model_source", "x"),
                                          ("flags", [{"message": "m"}])])
def test_a_record_with_a_field_of_the_wrong_type_is_one_line_for_every_reader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: object,
) -> None:
    """Found by the fuzz suite at scale 5: a record whose flags held an integer ended ``export`` in a traceback. The
    one record reader (report.compare.load_record: export, --leaderboard, --compare, studies) checks every field a
    consumer reads (runs.record.field_problem)."""
    import json

    record = {"robustlab_version": "0.1.0", "dataset": "digits", "n_examples": 1, "eps": 0.1, "norm": "linf",
              "eps_label": "0.1", "clean_acc": 1.0, "robust_acc": 1.0, "attacks": {"fgsm": {"robust_acc": 1.0}},
              "flags": [], "per_sample": {"clean": [1], "broken_by": {"fgsm": [-1]}}, field: value}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(record))
    for argv in (["export", str(path), "--robustbench", "--out", str(tmp_path / "e.json")],
                 ["report", "--leaderboard", str(path), "--out", str(tmp_path / "board")]):
        code, err = _cli(argv, capsys)
        assert code == 2 and len(err.splitlines()) == 1 and field in err, (argv, err)
