"""No silent wrong number: the probe forward, step sizes, budgets and labels (issue 20, item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from outside import eval_args, write_model
from test_eval_output import _one_error_line

from robustlab.cli import main
from robustlab.runs.record import eps_label


@pytest.mark.parametrize("forward, words", [
    ("nan", "NaN or infinite logits for 16 of 16"),
    ("integer", "torch.int64 outputs, not float logits"),
])
def test_non_finite_or_integer_logits_are_refused_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], forward: str, words: str
) -> None:
    out = tmp_path / "r.json"
    assert main(eval_args(*write_model(tmp_path / "m", forward), "--out", str(out))) == 2
    assert words in _one_error_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("forward, repaired", [("detached", True), ("no_grad", True), ("constant", False)])
def test_gradient_free_model_gets_square_on_the_model_and_the_straight_through_entry_where_it_repairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], forward: str, repaired: bool
) -> None:
    out = tmp_path / "r.json"
    args = eval_args(*write_model(tmp_path / "m", forward), "--out", str(out), n=8)
    args.remove("--no-checks")  # the checks must be skipped, not crash
    assert main(args) == 0
    record = json.loads(out.read_text())
    assert list(record["attacks"]) == ["square", "straight-through"] if repaired else ["square"]
    assert [f["code"] for f in record["flags"]] == ["zero_gradients"] + (["straight_through"] if repaired else [])
    said = capsys.readouterr().out
    assert "fgsm, pgd-3 skipped on the model" in said
    assert ("ran through the straight-through surrogate" in said) == repaired
    if repaired:  # the members are the listed gradient attacks, run on the surrogate and named so
        assert list(record["attacks"]["straight-through"]["robust_acc_after"]) == ["fgsm", "pgd-3"]
        assert record["attack_params"]["straight-through"]["pgd-3"]["gradients"] == "straight-through"
        assert record["straight_through"]["replaced"][0]["call"] == "Tensor.detach"
    else:
        assert "mark the component with robustlab.straight_through" in said


@pytest.mark.parametrize("value", ["0", "-0.01", "-1/255"])
def test_step_size_zero_or_negative_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    out = tmp_path / "r.json"
    assert main(eval_args(*write_model(tmp_path / "m"), "--out", str(out), f"--step-size={value}")) == 2
    assert "--step-size" in _one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_eps_zero_warns_and_negative_eps_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_model(tmp_path / "m")
    args = eval_args(*model, "--out", str(tmp_path / "r.json"))
    args[args.index("--eps") + 1] = "0"
    assert main([*args, "--step-size", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "warning: eps is 0" in out and "eps=0 (linf)" in out
    # issue 33: without --step-size, eps 0 was refused with a message about --step-size=0, never given
    assert main([*args, "--out", str(tmp_path / "z.json")]) == 0
    assert "warning: eps is 0" in capsys.readouterr().out
    args[args.index("--eps") + 1] = "-0.1"
    assert main([*args, "--out", str(tmp_path / "s.json")]) == 2
    assert "negative" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("eps, label", [(8 / 255, "8/255"), (100.0, "100"), (-0.0, "0"), (0.0, "0"), (1.0, "1"),
                                        (0.5, "0.5"), (0.1, "0.1")])
def test_eps_labels(eps: float, label: str) -> None:
    assert eps_label(eps) == label


@pytest.mark.parametrize("device", ["meta", "cuda:x", "", "xla", "cpu:-1"])
def test_bad_eval_devices_give_one_line_naming_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        device: str) -> None:
    assert main(eval_args(*write_model(tmp_path / "m"), "--out", str(tmp_path / "r.json"), f"--device={device}")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--device" in line and "train.device" not in line
