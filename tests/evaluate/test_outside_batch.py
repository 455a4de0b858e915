"""Outside models and batches (issue 33, item 5): a forward failing inside an attack is one line naming the batch size;
a batch of one never reaches a model with batch statistics; a model whose logits depend on its batch is flagged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from outside import eval_args, fitted_weights, write_model
from test_eval_output import _one_error_line
from torch import nn

from robustlab.cli import main
from robustlab.data import fixed_subset, load_dataset
from robustlab.errors import UserError
from robustlab.evaluate import evaluate_model, guard
from robustlab.evaluate.batch import BATCH_TOLERANCE, batch_dependence
from robustlab.evaluate.failures import forward_failures


def _record(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_forward_failing_inside_an_attack_is_one_line_naming_the_batch_size_and_the_state_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The "pairs" model passes the probe (1, 2 and 16 inputs) and fails on an odd batch of survivors."""
    out = tmp_path / "r.json"
    broken = write_model(tmp_path / "m", "pairs")
    assert main(eval_args(*broken, "--batch-size", "8", "--out", str(out))) == 2
    line = _one_error_line(capsys.readouterr().err)
    found = re.search(r"the model Net's forward fails on a batch of (\d+) inputs inside fgsm \(RuntimeError: ", line)
    assert found is not None and int(found.group(1)) % 2 == 1, line
    assert "make its forward work for any batch size" in line and not out.exists()

    # the first batch's verdicts were saved; the fixed forward (same weights) resumes from them
    fixed = write_model(tmp_path / "m", "plain", name="fixed.py")
    assert fixed[1] == broken[1]
    assert main(eval_args(*fixed, "--batch-size", "8", "--out", str(out))) == 0
    assert "resuming evaluation" in capsys.readouterr().out
    straight = tmp_path / "straight.json"
    assert main(eval_args(*fixed, "--batch-size", "8", "--out", str(straight))) == 0
    assert _record(out)["per_sample"] == _record(straight)["per_sample"]


def test_a_forward_failing_on_a_clean_batch_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert main(eval_args(*write_model(tmp_path / "m", "pairs"), "--batch-size", "5", "--out", str(out))) == 2
    assert "Net's forward fails on a batch of 5 inputs on the clean images of batch 1 (RuntimeError: " in (
        _one_error_line(capsys.readouterr().err))


def test_a_batch_norm_model_never_meets_a_batch_of_one_and_is_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """17 images in batches of 16: a trailing batch of one, and attacks on its one sample."""
    out = tmp_path / "r.json"
    assert main(eval_args(*write_model(tmp_path / "m", "batch_norm"), "--batch-size", "16", "--out", str(out),
                          n=17)) == 0
    record = _record(out)
    assert record["per_sample"]["clean"][-1] == 1  # the lone sample was attacked too
    flags = {f["code"]: f for f in record["flags"]}
    assert "Net's forward fails on a batch of one (ValueError: Expected more than 1 value" in (
        flags["batch_dependent"]["message"])
    assert "warning: the model Net's forward fails on a batch of one" in capsys.readouterr().out


class _BatchMean(nn.Module):
    """Logits minus their batch mean: no error on any batch size, but every logit depends on the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x.flatten(1))
        return z - z.mean(0, keepdim=True)


class _Noisy(nn.Module):
    """A randomized model (noise on the input): two forwards differ, but not because of the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1) + 0.1 * torch.randn_like(x.flatten(1)))


def test_batch_dependence_is_measured_on_the_probe() -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    flag = batch_dependence(_BatchMean(), x)
    assert flag is not None and flag.code == "batch_dependent" and flag.value is not None
    assert flag.value > 100 * BATCH_TOLERANCE and "_BatchMean's logits for an image depend" in flag.message
    assert batch_dependence(_Noisy(), x) is None
    assert batch_dependence(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), x) is None
    noisy = _Noisy()
    state = torch.get_rng_state()
    batch_dependence(noisy, x)
    assert torch.equal(torch.get_rng_state(), state)  # a randomized model's draws for the attacks stay as they were


def test_a_healthy_model_gets_no_flag_and_the_same_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = fixed_subset(load_dataset("digits", "test"), 17, seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    model.load_state_dict({k.replace("fc.", "1."): v for k, v in fitted_weights().items()})

    def run() -> dict:
        return evaluate_model(model, data, attacks=["fgsm", "pgd-3"], eps=0.1, batch_size=8, device="cpu",
                              log=lambda _: None)

    checked = run()
    monkeypatch.setattr(guard, "batch_dependence", lambda *_: None)
    unchecked = run()
    assert "batch_dependent" not in [f["code"] for f in checked["flags"]]
    for key in ("clean_acc", "robust_acc", "per_sample", "flags", "checks", "attack_params"):
        assert checked[key] == unchecked[key], key
    for name, entry in checked["attacks"].items():
        assert {k: v for k, v in entry.items() if k != "time_s"} == (
            {k: v for k, v in unchecked["attacks"][name].items() if k != "time_s"}), name


def test_only_failures_inside_the_forward_are_turned_into_one_line() -> None:
    class Raising(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom\nsecond line")

    class Interrupted(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise KeyboardInterrupt

    model = Raising()
    with pytest.raises(UserError, match=r"^the model Raising's forward fails on a batch of 3 inputs inside pgd-20 "
                                        r"\(RuntimeError: boom\); make"):
        with forward_failures(model, "inside pgd-20"):
            model(torch.zeros(3, 2))
    with pytest.raises(UserError, match="a batch of 1 input inside fgsm"):
        with forward_failures(model, "inside fgsm"):
            model(torch.zeros(1, 2))
    with pytest.raises(KeyError):  # raised outside the model's forward: an attack's own bug keeps its traceback
        with forward_failures(model, "inside fgsm"):
            raise KeyError("attack bug")
    with pytest.raises(RuntimeError, match="boom"):  # another module than the one watched
        with forward_failures(model, "inside fgsm"):
            Raising()(torch.zeros(2, 2))
    with pytest.raises(UserError, match="^its own words$"):  # a UserError passes as it is
        with forward_failures(model, "inside fgsm"):
            raise UserError("its own words")
    interrupted = Interrupted()
    with pytest.raises(KeyboardInterrupt):
        with forward_failures(interrupted, "inside fgsm"):
            interrupted(torch.zeros(2, 2))
