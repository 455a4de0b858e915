"""The evaluation runner: worst-case aggregation, AutoAttack cascade, threat-model judging, resumption."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from robustlab.data import ImageDataset
from robustlab.evaluate import evaluate_model
from robustlab.evaluate.runner import eps_label, run_suite, summarise
from robustlab.evaluate.state import EvalState
from robustlab.evaluate.suite import AttackSpec, build_suite


class ThresholdModel(nn.Module):
    """Class = 1 if the mean pixel exceeds 0.5, else 0: breakable iff |mean − 0.5| < ε (for L∞)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1) - 0.5
        return torch.stack([-m, m], dim=1) * 20


def dataset(means: list[float]) -> ImageDataset:
    images = torch.stack([torch.full((1, 4, 4), round(m * 255)) for m in means]).to(torch.uint8)
    labels = torch.tensor([int(m > 0.5) for m in means])
    return ImageDataset(images=images, labels=labels, classes=["low", "high"], name="toy")


def fixed(kind: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **_: object) -> torch.Tensor:
    """Hand-made "attacks" with known outcomes."""
    if kind == "noop":
        return x
    if kind == "jump":  # 0.4 toward the other class: crosses the threshold, far outside ε = 0.1
        return (x + 0.4 * torch.sign(0.5 - x)).clamp(0, 1)
    raise ValueError(kind)


def spec(name: str, kind: str) -> AttackSpec:
    return AttackSpec(name, functools.partial(fixed, kind), {"kind": kind}, uses_generator=False)


def test_worst_case_is_per_sample_and_out_of_ball_points_are_not_breaks() -> None:
    data = dataset([0.1, 0.2, 0.8, 0.9, 0.45, 0.55])
    model = ThresholdModel()
    specs = [spec("noop", "noop"), spec("cheat", "jump"), *build_suite(["pgd-10"], eps=0.1, norm="linf", step_size=0.03)]
    state = run_suite(model, data, specs, eps=0.1, norm="linf", batch_size=4, device=torch.device("cpu"), seed=0)
    result = summarise(state, specs)
    assert result["clean_acc"] == 1.0
    assert result["attacks"]["noop"]["robust_acc"] == 1.0
    # "cheat" moves points far outside the ε-ball: never counted as breaks, flagged as an attack bug
    assert result["attacks"]["cheat"]["robust_acc"] == 1.0
    assert [f["code"] for f in result["flags"]] == ["attack_bug"]
    assert result["attacks"]["cheat"]["out_of_bounds"] == 6
    # PGD breaks exactly the two samples within 0.1 of the threshold
    assert result["attacks"]["pgd-10"]["robust_acc"] == pytest.approx(4 / 6)
    assert result["per_sample"]["broken_by"]["pgd-10"] == [-1, -1, -1, -1, 0, 0]
    assert result["robust_acc"] == pytest.approx(4 / 6)


def test_autoattack_group_runs_members_on_survivors_and_reports_each_step() -> None:
    data = dataset([0.1, 0.3, 0.45, 0.55, 0.7, 0.9])
    specs = build_suite(["autoattack-fast"], eps=0.12, norm="linf", step_size=0.03)
    state = run_suite(ThresholdModel(), data, specs, eps=0.12, norm="linf", batch_size=6, device=torch.device("cpu"), seed=0)
    result = summarise(state, specs)
    entry = result["attacks"]["autoattack-fast"]
    assert entry["robust_acc"] == pytest.approx(4 / 6)
    assert list(entry["robust_acc_after"]) == ["apgd-ce", "apgd-t"]
    assert state.broken_by["autoattack-fast"][2:4] == [0, 0]  # APGD-CE broke them
    # two classes: APGD-T (targeted DLR needs 4 logits) is skipped, and the record says so
    assert state.skipped == ["apgd-t"] and [f["code"] for f in result["flags"]] == ["too_few_classes"]


def test_unknown_sample_clean_errors_are_not_attacked() -> None:
    data = dataset([0.1, 0.9])
    data.labels[:] = torch.tensor([1, 1])  # first sample misclassified
    specs = build_suite(["pgd-5"], eps=0.01, norm="linf", step_size=0.01)
    state = run_suite(ThresholdModel(), data, specs, eps=0.01, norm="linf", batch_size=2, device=torch.device("cpu"), seed=0)
    assert state.clean == [0, 1] and state.broken_by["pgd-5"] == [-2, -1]


class Interrupt(Exception):
    pass


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))


def test_resumed_evaluation_gives_the_same_record(tmp_path: Path) -> None:
    torch.manual_seed(1)
    means = torch.rand(40).tolist()
    data = dataset(means)
    model = _small_model()
    kwargs = dict(attacks=["fgsm", "pgd-5", "square"], eps=0.05, batch_size=8, seed=3, device="cpu", log=lambda _: None)
    straight = evaluate_model(model, data, **kwargs, state_path=tmp_path / "a.state.json")

    calls = {"n": 0}
    original = EvalState.save

    def save_then_die(self: EvalState, path: Path | None) -> None:
        original(self, path)
        calls["n"] += 1
        if calls["n"] == 2:
            raise Interrupt

    state_path = tmp_path / "b.state.json"
    EvalState.save = save_then_die  # type: ignore[method-assign]
    try:
        with pytest.raises(Interrupt):
            evaluate_model(model, data, **kwargs, state_path=state_path)
    finally:
        EvalState.save = original  # type: ignore[method-assign]
    assert json.loads(state_path.read_text())["cursor"] == 2
    messages: list[str] = []
    resumed = evaluate_model(model, data, **{**kwargs, "log": messages.append}, state_path=state_path)
    assert any("resuming" in m for m in messages)
    for key in ("clean_acc", "robust_acc", "per_sample"):
        assert resumed[key] == straight[key]
    assert {k: v["robust_acc"] for k, v in resumed["attacks"].items()} == {k: v["robust_acc"] for k, v in straight["attacks"].items()}


def test_changed_setting_starts_fresh_with_a_message(tmp_path: Path) -> None:
    data = dataset([0.1, 0.45, 0.9])
    state_path = tmp_path / "s.state.json"
    evaluate_model(ThresholdModel(), data, attacks=["pgd-3"], eps=0.1, device="cpu", state_path=state_path, log=lambda _: None)
    messages: list[str] = []
    evaluate_model(ThresholdModel(), data, attacks=["pgd-3"], eps=0.2, device="cpu", state_path=state_path, log=messages.append)
    assert any("settings changed" in m and "eps" in m for m in messages)


def test_eps_labels() -> None:
    assert eps_label(8 / 255) == "8/255"
    assert eps_label(0.1) == "0.1"
    assert eps_label(0.5) == "0.5"


def test_square_based_suites_refuse_l2_up_front() -> None:
    from robustlab.errors import UserError

    for name in ("square", "autoattack"):
        with pytest.raises(UserError, match="linf only"):
            build_suite([name], eps=0.5, norm="l2", step_size=0.1)
    assert [s.name for s in build_suite(["autoattack-fast"], eps=0.5, norm="l2", step_size=0.1)] == ["autoattack-fast"]
