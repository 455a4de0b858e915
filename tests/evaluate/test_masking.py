"""Masking broken, not flagged (issue 32): the routing through the straight-through surrogate, its gates, and
verdicts judged on the real model.

The acceptance test: a linear classifier whose exact robust accuracy is known in closed form evaluates, with
the default attacks, within one point of it however its forward hides the input (``detach``, ``.data``, 8-bit
``torch.round``); without the surrogate the detached and rounded versions score Square's number, 8 points higher.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from outside import eval_args, write_model
from torch import nn

from robustlab.cli import DEFAULT_ATTACKS, main
from robustlab.data import ImageDataset, load_dataset
from robustlab.evaluate import evaluate_model

EPS = 4 / 255


def synthetic(n: int = 100, classes: int = 10, side: int = 16) -> tuple[ImageDataset, torch.Tensor]:
    """8-bit images around random class means (spread 0.11, noise 0.15), and the means: the nearest-mean linear
    model at ε = 4/255 is robust on about half of them."""
    g = torch.Generator().manual_seed(0)
    d = 3 * side * side
    means = 0.5 + 0.11 * (torch.rand(classes, d, generator=g) - 0.5)
    labels = torch.arange(n) % classes
    x = (means[labels] + 0.15 * torch.randn(n, d, generator=g)).clamp(0, 1)
    images = (x * 255).round().to(torch.uint8).view(n, 3, side, side)
    return ImageDataset(images, labels, [str(c) for c in range(classes)], "synthetic"), means


def nearest_mean_weights(means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = means - 0.5
    return w, -0.5 * (w * means).sum(1)


def exact_robust_accuracy(data: ImageDataset, w: torch.Tensor, b: torch.Tensor, eps: float) -> float:
    """The L∞ robust accuracy of ``x -> w x + b`` inside [0, 1], exactly: per other class j the smallest margin
    over the box ∩ ball is separable per pixel (each pixel at the end of its interval that lowers it)."""
    x, y = data.images.flatten(1).double() / 255, data.labels
    w, b = w.double(), b.double()
    robust = (x @ w.t() + b).argmax(1) == y
    lo, hi = (-x).clamp(min=-eps), (1 - x).clamp(max=eps)
    for j in range(w.shape[0]):
        a = w[y] - w[j]
        worst = (a * x).sum(1) + b[y] - b[j] + torch.where(a > 0, a * lo, a * hi).sum(1)
        robust &= (worst > 0) | (y == j)
    return robust.double().mean().item()


class Linear(nn.Module):
    """``w · x + b`` with the input hidden from autograd as ``hide`` says (values unchanged on 8-bit images)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, hide: str) -> None:
        super().__init__()
        self.w, self.b, self.hide = nn.Parameter(w.clone()), nn.Parameter(b.clone()), hide

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hide == "detach":
            x = x.detach()
        elif self.hide == "data":
            x = x.data
        elif self.hide == "round":
            x = torch.round(x * 255) / 255
        return x.flatten(1) @ self.w.t() + self.b


@pytest.fixture(scope="module")
def linear_case() -> tuple[ImageDataset, torch.Tensor, torch.Tensor, float]:
    data, means = synthetic()
    w, b = nearest_mean_weights(means)
    return data, w, b, exact_robust_accuracy(data, w, b, EPS)


@pytest.mark.parametrize("hide", ["plain", "detach", "data", "round"])
def test_a_hidden_linear_model_evaluates_to_its_closed_form_robust_accuracy(linear_case, hide: str) -> None:
    data, w, b, exact = linear_case
    assert 0.3 < exact < 0.8  # neither trivial nor hopeless
    record = evaluate_model(Linear(w, b, hide), data, attacks=list(DEFAULT_ATTACKS), eps=EPS, checks=False,
                            log=lambda _: None)
    assert abs(record["robust_acc"] - exact) <= 0.01
    if hide == "plain":  # healthy gradients: nothing added, nothing recorded
        assert list(record["attacks"]) == ["fast"] and "straight_through" not in record and record["flags"] == []
        return
    assert list(record["attacks"]) == ["square" if hide in ("detach", "data") else "fast", "straight-through"]
    gradient_free = min(a["robust_acc"] for name, a in record["attacks"].items() if name != "straight-through")
    assert gradient_free >= exact + 0.05  # what the number was before the surrogate
    st = record["straight_through"]
    assert st["used"] and st["replaced"][0]["call"] == {"detach": "Tensor.detach", "data": "Tensor.data",
                                                        "round": "torch.round"}[hide]
    assert st["gates"]["forward_change"] == 0.0 and st["gates"]["repaired"] == st["gates"]["probe"]
    assert "straight_through" in [f["code"] for f in record["flags"]]


class DependsOnGrad(nn.Module):
    """A forward whose values depend on whether the detached input requires grad: a surrogate of it would attack a
    different function."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.detach().flatten(1)
        return self.fc(h * 2 if h.requires_grad else h)


def test_a_surrogate_whose_forward_differs_is_refused_with_its_reason() -> None:
    data = load_dataset("digits", "test").select(torch.arange(12))
    torch.manual_seed(0)
    record = evaluate_model(DependsOnGrad(), data, attacks=["pgd-3"], eps=0.1, checks=False, log=lambda _: None)
    st = record["straight_through"]
    assert not st["used"] and "differ from the model's" in st["reason"] and st["gates"]["forward_change"] > 1e-5
    assert list(record["attacks"]) == ["square"]
    flag = next(f for f in record["flags"] if f["code"] == "zero_gradients")
    assert "no straight-through surrogate repairs it" in flag["message"]
    assert "robustlab.straight_through" in flag["message"]


class ArgmaxGate(nn.Module):
    """Healthy, with a detach whose output only picks a row (as ANCRA's gates do): nothing hidden, nothing to add."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x.flatten(1))
        return z * self.fc.weight[z.detach().argmax(1)].mean(1, keepdim=True).abs()


def test_a_replaced_call_that_hides_no_gradient_adds_no_entry_and_no_record_block() -> None:
    data = load_dataset("digits", "test").select(torch.arange(12))
    torch.manual_seed(0)
    record = evaluate_model(ArgmaxGate(), data, attacks=["pgd-3"], eps=0.1, checks=False, log=lambda _: None)
    assert list(record["attacks"]) == ["pgd-3"] and "straight_through" not in record and record["flags"] == []


class Lookup(nn.Module):
    """Remembers its images and answers the label of the nearest one (L∞): robust at any ε below half their
    distance. Only inside a surrogate (its detached input then requires grad) it adds a bonus to the next class
    that grows with the distance to that image: zero on the images themselves (so the forward gate passes), and
    the surrogate is fooled by every step an attack takes."""

    def __init__(self, data: ImageDataset) -> None:
        super().__init__()
        self.register_buffer("table", data.images.flatten(1).float() / 255)
        self.register_buffer("labels", data.labels.clone())
        self.k = data.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.detach().flatten(1)
        nearest = (h[:, None] - self.table[None]).abs().amax(-1).argmin(1)
        logits = 10 * F.one_hot(self.labels[nearest], self.k).float()
        if h.requires_grad:
            bonus = 100 * (h - self.table[nearest]).sum(1, keepdim=True)
            logits = logits + bonus * F.one_hot((self.labels[nearest] + 1) % self.k, self.k)
        return logits


def test_every_break_is_judged_on_the_real_model() -> None:
    data = load_dataset("digits", "test").select(torch.arange(16))
    gaps = (data.images.flatten(1)[:, None].float() - data.images.flatten(1)[None].float()).abs().amax(-1) / 255
    assert gaps[~torch.eye(16, dtype=torch.bool)].min() > 2 * 0.05  # the lookup is robust at ε = 0.05
    record = evaluate_model(Lookup(data), data, attacks=["fgsm", "pgd-5"], eps=0.05, checks=False,
                            log=lambda _: None)
    assert record["straight_through"]["used"]
    entry = record["attacks"]["straight-through"]
    assert entry["backward_per_sample"] > 0  # the surrogate was attacked (and fooled: its bonus grows)...
    assert entry["robust_acc"] == record["clean_acc"] == record["robust_acc"] == 1.0  # ...the real model never


@pytest.mark.parametrize("forward", ["rounded", "detached"])
def test_verify_and_adaptive_go_through_the_same_routing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], forward: str
) -> None:
    out = tmp_path / "r.json"
    args = eval_args(*write_model(tmp_path / "m", forward), "--out", str(out), "--verify", "4", "--adaptive", n=12,
                     attacks="fast")
    args[args.index("--eps") + 1] = "0.02"  # survivors to verify
    assert main(args) == 0
    record = json.loads(out.read_text())
    assert record["verify"]["sampled"] == 4
    protocol = "autoattack + straight-through" if forward == "rounded" else "square + straight-through"
    assert record["verify"]["protocol"] == protocol
    assert "straight-through" in record["attacks"]
    assert "Traceback" not in capsys.readouterr().err


def test_a_numpy_round_trip_in_the_forward_is_named_and_marking_it_by_hand_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    assert main(eval_args(*write_model(tmp_path / "m", "numpy"), "--out", str(out), n=8)) == 0
    record = json.loads(out.read_text())
    assert not record["straight_through"]["used"] and list(record["attacks"]) == ["square"]
    assert {"call": "Tensor.numpy", "module": "the model forward (Net)"} in record["straight_through"]["unrepaired"]
    said = capsys.readouterr().out
    assert "Tensor.numpy in the model forward (Net)" in said
    assert "mark the component with robustlab.straight_through" in said
    marked = tmp_path / "marked"
    assert main(eval_args(*write_model(marked, "numpy_marked"), "--out", str(marked / "r.json"), n=8)) == 0
    record = json.loads((marked / "r.json").read_text())
    assert record["straight_through"]["used"] and list(record["attacks"]) == ["square", "straight-through"]
    assert "robustlab.straight_through" in [r["call"] for r in record["straight_through"]["replaced"]]


class ClampsInPlace(nn.Module):
    """A normalisation bug (issue 33): the input clamped in place under ``no_grad``, then a linear model."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.in_place = nn.Linear(64, 10), in_place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_place:
            with torch.no_grad():
                x.clamp_(0.2, 0.8)
        else:  # the same values and the same (identity) gradient, without writing into x
            x = x + (x.clamp(0.2, 0.8) - x).detach()
        return self.fc(x.flatten(1))


def test_a_model_that_writes_into_its_input_is_named_and_judged_on_the_real_images() -> None:
    data = load_dataset("digits", "test").select(torch.arange(40))
    run = {"attacks": ["fgsm", "pgd-5"], "eps": 0.1, "checks": False, "log": lambda _: None}
    writes, pure = evaluate_model(ClampsInPlace(True), data, **run), evaluate_model(ClampsInPlace(False), data, **run)
    assert writes["per_sample"] == pure["per_sample"] and writes["robust_acc"] == pure["robust_acc"] < 0.9
    flag = next(f for f in writes["flags"] if f["code"] == "input_modified")
    assert "its own forward (ClampsInPlace)" in flag["message"]
    assert all(a["out_of_bounds"] == 0 for a in writes["attacks"].values())
    assert "input_modified" not in [f["code"] for f in pure["flags"]]
