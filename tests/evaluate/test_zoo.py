"""RobustBench zoo models by name: architectures with RobustBench's checkpoint keys, local files only, via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab.cli import main
from robustlab.data import load_dataset
from robustlab.evaluate.zoo import ZOO, checkpoint_path, load_zoo_model
from robustlab.models.robustbench import DMWideResNet, WideResNet, preact_resnet18

# Counted from RobustBench 1.1.1's own classes (robustbench/model_zoo/architectures/): state-dict entries and
# parameters; our models also loaded their state dicts strictly and gave the same logits (to 1.5e-6).
LAYOUTS = [
    (lambda: WideResNet(28, 10), 155, 36_479_194,
     ["block1.layer.0.convShortcut.weight", "block3.layer.3.bn2.running_var", "fc.bias"]),
    (lambda: WideResNet(28, 10, sub_block1=True), 204, 38_119_866,
     ["sub_block1.layer.3.conv2.weight", "bn1.num_batches_tracked"]),
    (lambda: DMWideResNet(28, 10), 155, 36_479_194,
     ["init_conv.weight", "layer.2.block.0.shortcut.weight", "layer.1.block.3.batchnorm_1.bias", "logits.weight"]),
    (preact_resnet18, 102, 11_171_146, ["layer2.0.shortcut.0.weight", "layer4.1.bn2.running_mean", "linear.weight"]),
]


@pytest.mark.parametrize("build,entries,params,keys", LAYOUTS)
def test_architectures_have_robustbenchs_checkpoint_layout(build, entries: int, params: int, keys: list[str]) -> None:
    model = build()
    state = model.state_dict()
    assert len(state) == entries and sum(p.numel() for p in model.parameters()) == params
    assert all(k in state for k in keys)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def _images(tmp_path: Path, n: int = 6) -> Path:
    """A few CIFAR-shaped images (uint8 NHWC, 10 classes) as an npz test split."""
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npz"
    np.savez(path, x_test=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y_test=np.arange(n) % 10,
             classes=np.array([f"c{k}" for k in range(10)]))
    return path


def test_eval_robustbench_loads_the_local_checkpoint_offline(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Random PreAct-ResNet-18 weights saved as RobustBench's Wong2020Fast file (DataParallel keys under
    'state_dict', as some zoo files are): evaluated through the CLI, record and model_info as outside models'."""
    torch.manual_seed(0)
    model = preact_resnet18()
    path = checkpoint_path(tmp_path / "models", "cifar10", "Linf", "Wong2020Fast")
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    out = tmp_path / "record.json"
    code = main(["eval", "--robustbench", "Wong2020Fast", "--dataset", "cifar10", "--threat-model", "Linf",
                 "--model-dir", str(tmp_path / "models"), "--data", "npz", "--data-root", str(_images(tmp_path)),
                 "--attacks", "fgsm", "--no-checks", "--device", "cpu", "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["model_source"]["robustbench"] == "Wong2020Fast" and record["architecture"] == "PreActResNet-18"
    assert record["model_source"]["normalization"]["mean"] == [0.4914, 0.4822, 0.4465]
    assert record["eps_label"] == "8/255" and record["norm"] == "linf" and record["n_examples"] == 6
    assert record["model_info"]["threat_model"] == "Linf" and record["model_info"]["autoattack_acc"] is None
    data = load_dataset("npz", "test", root=tmp_path / "images.npz")
    loaded, _ = load_zoo_model("Wong2020Fast", "cifar10", "Linf", tmp_path / "models", data, torch.device("cpu"),
                               log=lambda _: None)
    x = data.images.float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in ([0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]))
    with torch.no_grad():  # the checkpoint's weights, behind RobustBench's CIFAR-10 normalisation
        expected = model.eval()((x - mean) / std)
        torch.testing.assert_close(loaded(x), expected)
    assert record["clean_acc"] == pytest.approx((expected.argmax(1) == data.labels).float().mean().item())
    assert main(["export", str(out), "--robustbench", "--dataset", "cifar10", "--out", str(tmp_path / "rb.json")]) == 0
    entry = json.loads((tmp_path / "rb.json").read_text())  # a zoo model's record exports like any other
    assert entry["architecture"] == "PreActResNet-18" and entry["dataset"] == "cifar10" and entry["eps"] == "8/255"
    # issue 33: without --dataset/--name the entry was named after its architecture, its data set "npz"
    assert main(["export", str(out), "--robustbench", "--out", str(tmp_path / "rb2.json")]) == 0
    entry = json.loads((tmp_path / "rb2.json").read_text())
    assert entry["name"] == "Wong2020Fast" and entry["dataset"] == "cifar10"
    # a zoo model on 1-channel data: told what the zoo model takes, not to give one normalisation value
    code = main(["eval", "--robustbench", "Wong2020Fast", "--dataset", "cifar10", "--threat-model", "Linf",
                 "--model-dir", str(tmp_path / "models"), "--data", "digits", "--attacks", "fgsm", "--no-checks",
                 "--out", str(tmp_path / "digits.json")])
    assert code == 2 and "takes 3-channel cifar10 images, but the data has 1 channel(s)" in capsys.readouterr().err


def test_missing_checkpoint_is_one_line_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", "--robustbench", "Carmon2019Unlabeled", "--dataset", "cifar10", "--threat-model", "Linf",
                 "--model-dir", str(tmp_path / "models"), "--data-root", str(tmp_path / "no-data"),
                 "--attacks", "fgsm"])  # checked first
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert str(tmp_path / "models" / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in err
    assert ZOO[("cifar10", "Linf")]["Carmon2019Unlabeled"].gdrive_id in err and "never downloads" in err


@pytest.mark.parametrize("argv,needle", [
    (["--robustbench", "Carmon2019Unlabelled"], "did you mean Carmon2019Unlabeled"),
    (["--robustbench", "Standard", "--dataset", "imagenet"], "no RobustBench entries for --dataset imagenet"),
    (["--robustbench", "Standard", "--model", "x.py:f"], "drop --model"),
    (["--robustbench", "Standard", "--norm", "l2"], "contradicts --threat-model Linf"),
])
def test_bad_robustbench_arguments_are_one_line(argv: list[str], needle: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", *argv, "--attacks", "fgsm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
