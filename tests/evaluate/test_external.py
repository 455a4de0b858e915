"""Outside models through ``robustlab eval --model FILE.py:factory --weights W``: same record as the API, one-line
failures."""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from robustlab.cli import main
from robustlab.data import fixed_subset, load_dataset
from robustlab.evaluate import evaluate_model
from robustlab.evaluate.external import unwrap_state_dict, wrap_normalize

SRC = Path(__file__).resolve().parents[2] / "src"

MODEL_FILE = '''
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Settings:  # a dataclass needs its module in sys.modules while the file is imported
    width: int = 8


class Net(nn.Module):
    def __init__(self, width=Settings().width):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.fc = nn.Linear(width * 64, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class Summed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)).sum(1)


def factory():
    return Net()


def wide():
    return Net(width=16)


def broken():
    raise RuntimeError("needs a GPU")


def not_a_module():
    return 3


def three_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def cifar_sized():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))


def summed():
    return Summed()
'''

ATTACKS = ["fgsm", "pgd-5"]
N = 40
EPS = 0.1


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model file and weights: a digits CNN trained briefly, saved as a DataParallel-style ``module.`` dict."""
    root = tmp_path_factory.mktemp("external")
    model_file = root / "my_model.py"
    model_file.write_text(MODEL_FILE)
    namespace = runpy.run_path(str(model_file))
    torch.manual_seed(0)
    model = namespace["factory"]()
    train = load_dataset("digits", "train")
    x, y = train.images.float() / 255, train.labels
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    paths = {"model": model_file, "weights": root / "weights.pt", "st": root / "weights.safetensors", "root": root}
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, paths["weights"])
    save_file(model.state_dict(), str(paths["st"]))
    for name in ("wide", "three_classes", "cifar_sized", "summed"):
        paths[name] = root / f"{name}.pt"
        torch.save(namespace[name]().state_dict(), paths[name])
    paths["pickled"] = root / "pickled.pt"
    torch.save(nn.Linear(2, 2), paths["pickled"])  # a whole module: pickled objects
    paths["garbage"] = root / "garbage.pt"
    paths["garbage"].write_bytes(b"not a checkpoint at all")
    paths["garbage_st"] = root / "garbage.safetensors"
    paths["garbage_st"].write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    paths["list"] = root / "list.pt"
    torch.save([torch.zeros(3)], paths["list"])
    paths["missing_key"] = root / "missing_key.pt"
    torch.save({k: v for k, v in model.state_dict().items() if k != "fc.bias"} | {"head.weight": torch.zeros(1)},
               paths["missing_key"])
    paths["syntax"] = root / "syntax.py"
    paths["syntax"].write_text("def factory(:\n")
    return paths


def _trained(files: dict[str, Path]) -> nn.Module:
    model = runpy.run_path(str(files["model"]))["factory"]()
    state = torch.load(files["weights"], weights_only=True)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model


def _cli_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", f"{files['model']}:factory", "--weights", str(files["weights"]), "--data", "digits",
            "--n-examples", str(N), "--attacks", ",".join(ATTACKS), "--eps", str(EPS), "--out", str(out), *extra]


def test_cli_record_equals_python_api(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "record.json"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "robustlab", *_cli_args(files, out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "removed the 'module.' prefix" in proc.stdout
    cli = json.loads(out.read_text())

    data = fixed_subset(load_dataset("digits", "test"), N, seed=0)
    api = evaluate_model(_trained(files), data, attacks=ATTACKS, eps=EPS, device="cpu", log=lambda _: None)
    assert 0.5 < api["clean_acc"] and api["robust_acc"] < api["clean_acc"]  # a trained model that attacks can break
    for key in ("clean_acc", "robust_acc", "per_sample", "attack_params", "eps", "norm", "n_examples", "seed"):
        assert cli[key] == api[key], key
    assert ({k: v["robust_acc"] for k, v in cli["attacks"].items()}
            == {k: v["robust_acc"] for k, v in api["attacks"].items()})
    assert [f["code"] for f in cli["flags"]] == [f["code"] for f in api["flags"]]

    source = cli["model_source"]
    assert source["file"] == str(files["model"]) and source["factory"] == "factory" and source["architecture"] == "Net"
    assert source["model_sha256"] == hashlib.sha256(files["model"].read_bytes()).hexdigest()
    assert source["weights_sha256"] == hashlib.sha256(files["weights"].read_bytes()).hexdigest()
    info = cli["model_info"]
    assert (info["clean_acc"] == round(100 * api["clean_acc"], 2)
            and info["robust_acc"] == round(100 * api["robust_acc"], 2))
    assert info["autoattack_acc"] is None and info["robust_acc_attacks"] == ATTACKS
    assert (info["eps"], info["norm"], info["n_examples"], info["threat_model"]) == (EPS, "linf", N, "Linf")
    assert "robustlab" in info["attack_version"] and "fgsm, pgd-5" in info["attack_version"]


def test_safetensors_weights_resume_and_autoattack_accuracy(files: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    args = ["eval", "--model", f"{files['model']}:factory", "--weights", str(files["st"]), "--data", "digits",
            "--n-examples", "4", "--attacks", "fgsm,autoattack", "--eps", str(EPS), "--out", str(out), "--no-checks"]
    assert main(args) == 0
    first = json.loads(out.read_text())
    assert "prefix" not in capsys.readouterr().out  # nothing to unwrap in a plain safetensors state dict
    assert first["model_info"]["autoattack_acc"] == round(100 * first["attacks"]["autoattack"]["robust_acc"], 2)
    assert "autoattack standard" in first["model_info"]["attack_version"]
    assert main(args) == 0
    assert "resuming evaluation" in capsys.readouterr().out
    assert json.loads(out.read_text())["per_sample"] == first["per_sample"]


def test_normalisation_wraps_the_model(files: dict[str, Path], tmp_path: Path) -> None:
    model = _trained(files).eval()
    x = torch.rand(4, 1, 8, 8)
    wrapped = wrap_normalize(model, ([0.5], [0.25]), channels=1).eval()
    assert torch.allclose(wrapped(x), model((x - 0.5) / 0.25))
    assert wrap_normalize(model, None, channels=1) is model

    out = tmp_path / "norm.json"
    assert main([*_cli_args(files, out, "--no-checks"), "--mean", "0.5", "--std", "0.25"]) == 0
    record = json.loads(out.read_text())
    assert record["model_source"]["normalization"] == {"mean": [0.5], "std": [0.25]}
    data = fixed_subset(load_dataset("digits", "test"), N, seed=0)
    with torch.no_grad():
        expected = (model((data.images.float() / 255 - 0.5) / 0.25).argmax(1) == data.labels).int().tolist()
    assert record["per_sample"]["clean"] == expected


def test_unwrap_wrapper_keys_and_prefix() -> None:
    state = {"w": torch.ones(2)}
    messages: list[str] = []
    nested = {"epoch": 3, "net": {"state_dict": {"module.w": torch.ones(2)}}}
    assert unwrap_state_dict(nested, "f.pt", messages.append).keys() == state.keys()
    assert len(messages) == 3 and "'net'" in messages[0] and "'state_dict'" in messages[1] and "module." in messages[2]
    assert unwrap_state_dict({"model": state, "optimizer": {}}, "f.pt", messages.append) is state
    partly = {"module.w": torch.ones(1), "v": torch.ones(1)}
    assert unwrap_state_dict(partly, "f.pt", messages.append) is partly  # a prefix on some keys only is kept


@pytest.mark.parametrize(
    "model,weights,extra,needle",
    [
        ("/nonexistent/m.py:factory", "weights", [], "model file /nonexistent/m.py not found"),
        ("{model}", "weights", [], "not of the form"),
        ("{model}:nope", "weights", [], "has no callable 'nope'; it defines: "),
        ("{syntax}:factory", "weights", [], "importing model file"),
        ("no_such_package_xyz.mod:factory", "weights", [], "cannot import module 'no_such_package_xyz.mod'"),
        ("{model}:broken", "weights", [], "raised RuntimeError: needs a GPU"),
        ("{model}:not_a_module", "weights", [], "returned int, not a torch.nn.Module"),
        ("{model}:factory", "/nonexistent/w.pt", [], "weights file /nonexistent/w.pt not found"),
        ("{model}:factory", "garbage", [], "is corrupt or not a torch.save file"),
        ("{model}:factory", "garbage_st", [], "is corrupt or not safetensors"),
        ("{model}:factory", "pickled", [], "holds pickled Python objects (torch.nn.modules.linear.Linear)"),
        ("{model}:factory", "list", [], "is not a state dict of tensors"),
        ("{model}:factory", "missing_key", [], "missing: fc.bias; unexpected: head.weight"),
        ("{model}:factory", "wide", [], "wrong shape (file vs model): conv.weight (16, 1, 3, 3) vs (8, 1, 3, 3)"),
        ("{model}:three_classes", "three_classes", [], "outputs 3 classes but digits has 10"),
        ("{model}:cifar_sized", "cifar_sized", [], "fails on digits inputs (1x8x8"),
        ("{model}:summed", "summed", [], "returns (2,) for 2 inputs; it must return logits of shape (N, classes)"),
        ("{model}:factory", "weights", ["--normalize", "cifar10"],
         "normalisation has 3 values per statistic but the images have 1 channels"),
        ("{model}:factory", "weights", ["--normalize", "mnist"], "--normalize 'mnist' is unknown"),
        ("{model}:factory", "weights", ["--mean", "0.5"], "--mean and --std go together"),
        ("{model}:factory", "weights", ["--mean", "0.5", "--std", "0"], "std > 0"),
        ("{model}:factory", "weights", ["--normalize", "cifar10", "--mean", "0.5"], "not both"),
        ("{model}:factory", None, [], "parameter and buffer tensors; pass its weights with --weights"),
        ("{model}:factory", "weights", ["--data", "nope"], "dataset"),
        ("{model}:factory", "weights", [".", "--no-checks"], "not both"),
    ],
)
def test_bad_outside_model_is_one_line_and_exit_2(
    files: dict[str, Path], model: str, weights: str | None, extra: list[str], needle: str,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    args = ["eval", "--model", model.format(**files), "--data", "digits", "--n-examples", "4", "--attacks", "fgsm",
            "--out", str(tmp_path / "r.json")]
    if weights is not None:
        args += ["--weights", str(files.get(weights, weights))]
    code = main([*args, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("robustlab: error: ")
    assert needle in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["eval"], "needs a run folder, or --model"),
        (["eval", ".", "--data", "digits"], "--data applies to --model only"),
        (["eval", ".", "--weights", "w.pt"], "auto, model or ema"),
    ],
)
def test_run_folder_form_rejects_model_options(args: list[str], needle: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err
