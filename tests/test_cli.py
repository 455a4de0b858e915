"""End-to-end: the robustlab command on digits, and bad input giving one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustlab.cli import main

TINY = [
    "model.options={width: 8}", "method.attack.steps=2", "data.eval_examples=64", "train.eval_pgd_steps=2",
    "train.epochs=1", "data.batch_size=256",
]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "digits_pgd_at", f"out_dir={out}", "--quiet", *TINY]) == 0
    return out / "digits_pgd_at"


def test_train_then_eval_writes_a_complete_record(trained_run: Path, capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    record_path = tmp_path / "record.json"
    code, out, _ = run_cli(["eval", str(trained_run), "--attacks", "fgsm,pgd-5,cw-5", "--n-examples", "40", "--out",
                            str(record_path)], capsys)
    assert code == 0
    assert "worst case" in out and "pgd-5" in out
    record = json.loads(record_path.read_text())
    for key in ("clean_acc", "robust_acc", "attacks", "eps", "eps_label", "norm", "n_examples", "seed", "flags",
                "attack_params", "checkpoint"):
        assert key in record
    assert record["n_examples"] == 40 and record["eps"] == pytest.approx(0.1)
    worst = record["robust_acc"]
    assert all(worst <= a["robust_acc"] <= record["clean_acc"] for a in record["attacks"].values())
    clean, broken_by = record["per_sample"]["clean"], record["per_sample"]["broken_by"]
    robust_all = [c == 1 and all(broken_by[a][i] == -1 for a in ("fgsm", "pgd-5", "cw-5")) for i, c in enumerate(clean)]
    assert sum(robust_all) / 40 == pytest.approx(worst)
    assert record["attacks"]["pgd-5"]["backward_per_sample"] > 0


def test_list_shows_every_registry(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["list"], capsys)
    assert code == 0
    for name in ("pgd_at", "trades", "mart", "small_cnn", "wrn34_10", "digits", "cifar10", "pgd-K", "digits_pgd_at",
                 "fgsm_rs", "n_fgsm", "pgd_at+fsr+awp", "tinyimagenet", "cifar100_resnet18_afd"):
        assert name in out
    code, out, _ = run_cli(["list", "models", "wrn*"], capsys)
    assert out.split() == ["models:", "wrn28_10", "wrn34_10"]
    code, out, _ = run_cli(["list", "methods", "*uad"], capsys)
    lines = out.splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["pgd_at+uad", "trades+uad"]
    assert all("UAD-AT (built from the abstract)" in line for line in lines)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "digits_pgd_at", "train.epohcs=2"], "did you mean train.epochs"),
        (["train", "digits_pgd_at", "optim.lr=fast"], "optim.lr"),
        (["train", "digits_pgd_at", "method.attack.eps=8/0"], "8/255"),
        (["train", "digits_pgd_at", "model.name=resnet19"], "resnet18"),
        (["train", "no_such_config"], "neither a file nor a bundled config"),
        (["train", "digits_pgd_at", "data.name=cifar10", "data.root=/nonexistent"], "download"),
        (["eval", "/nonexistent/run"], "not found"),
        (["eval", ".", "--attacks", "pgd-x"], "unknown attack"),
        (["eval", ".", "--eps", "9/0"], "expected a number"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    args = [*args, f"out_dir={tmp_path}"] if args[0] == "train" else args
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("robustlab: error: ")
    assert needle in err
    assert not list(tmp_path.rglob("*.safetensors"))


def test_bad_yaml_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {name: digits\nmodel: [")
    code, _, err = run_cli(["train", str(bad)], capsys)
    assert code == 2 and "not valid YAML" in err and len(err.strip().splitlines()) == 1


def test_corrupt_checkpoint_is_one_line_exit_2_via_the_real_entry_point(trained_run: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes((trained_run / "checkpoints" / "last.safetensors").read_bytes()[:5000])
    proc = subprocess.run([sys.executable, "-m", "robustlab", "eval", str(corrupt)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_resuming_with_a_truncated_last_checkpoint_is_a_user_error(trained_run: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    copy = tmp_path / "digits_pgd_at"
    shutil.copytree(trained_run, copy)
    last = copy / "checkpoints" / "last.safetensors"
    last.write_bytes(last.read_bytes()[:100])
    code, _, err = run_cli(["train", "digits_pgd_at", f"out_dir={tmp_path}", "--quiet", *TINY], capsys)
    assert code == 2 and "corrupt" in err


def test_finetune_command_from_a_natural_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = [f"out_dir={tmp_path}", *TINY]
    assert main(["train", "digits_natural", "--quiet", *tiny]) == 0
    code, _, err = run_cli(["train", "digits_finetune_afd", *tiny], capsys)
    assert code == 2 and "robustlab finetune" in err  # AFD needs a source model
    code, out, _ = run_cli(["finetune", "digits_finetune_afd", "--from", str(tmp_path / "digits_natural"), "--quiet",
                            "--probe-examples", "32", *tiny], capsys)
    assert code == 0 and "epoch 1" in out
    assert (tmp_path / "digits_finetune_afd" / "checkpoints" / "last.safetensors").is_file()
    code, _, err = run_cli(["finetune", "digits_finetune_afd", "--from", str(tmp_path / "nowhere"), *tiny], capsys)
    assert code == 2 and "not found" in err


def test_eval_channels_last_runs_the_model_channels_last_with_the_same_verdicts(
        trained_run: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import robustlab.evaluate.api as api

    formats: list[bool] = []
    original = api.run_suite

    def spy(model: torch.nn.Module, *args: object, **kwargs: object) -> object:
        weights = [p for p in model.parameters() if p.dim() == 4]
        formats.append(any(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                           for p in weights))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(api, "run_suite", spy)
    records = {}
    for flag in ([], ["--channels-last"]):
        path = tmp_path / f"record{len(flag)}.json"
        code, _, _ = run_cli(["eval", str(trained_run), "--attacks", "fgsm,pgd-5", "--n-examples", "40", "--out",
                              str(path), *flag], capsys)
        assert code == 0
        records[bool(flag)] = json.loads(path.read_text())
    assert formats == [False, True]
    assert records[False]["channels_last"] is False and records[True]["channels_last"] is True
    assert records[True]["per_sample"] == records[False]["per_sample"]
