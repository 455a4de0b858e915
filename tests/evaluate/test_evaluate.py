"""The evaluation runner: worst-case aggregation, AutoAttack cascade, threat-model judging, resumption."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from toy_models import LinearClassifier

from robustlab.data import ImageDataset
from robustlab.evaluate import evaluate_model
from robustlab.evaluate.runner import run_suite, summarise
from robustlab.evaluate.state import EvalState
from robustlab.evaluate.suite import AttackSpec, autoattack_version, build_suite, group_that_ran
from robustlab.runs.record import eps_label


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
    specs = [spec("noop", "noop"), spec("cheat", "jump"),
             *build_suite(["pgd-10"], eps=0.1, norm="linf", step_size=0.03)]
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
    specs = build_suite(["apgd-ce-t"], eps=0.12, norm="linf", step_size=0.03)
    state = run_suite(ThresholdModel(), data, specs, eps=0.12, norm="linf", batch_size=6, device=torch.device("cpu"),
                      seed=0)
    result = summarise(state, specs)
    entry = result["attacks"]["apgd-ce-t"]
    assert entry["robust_acc"] == pytest.approx(4 / 6)
    assert list(entry["robust_acc_after"]) == ["apgd-ce", "apgd-t"]
    assert state.broken_by["apgd-ce-t"][2:4] == [0, 0]  # APGD-CE broke them
    # two classes: APGD-T (targeted DLR needs 4 logits) is skipped, and the record says so
    assert state.skipped == ["apgd-t"] and [f["code"] for f in result["flags"]] == ["too_few_classes"]


def test_unknown_sample_clean_errors_are_not_attacked() -> None:
    data = dataset([0.1, 0.9])
    data.labels[:] = torch.tensor([1, 1])  # first sample misclassified
    specs = build_suite(["pgd-5"], eps=0.01, norm="linf", step_size=0.01)
    state = run_suite(ThresholdModel(), data, specs, eps=0.01, norm="linf", batch_size=2, device=torch.device("cpu"),
                      seed=0)
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
    saved = json.loads(state_path.read_text())  # saved after each attack: the 2nd save ends attack 2 of batch 0
    assert (saved["cursor"], saved["attack_cursor"]) == (0, 2)
    messages: list[str] = []
    resumed = evaluate_model(model, data, **{**kwargs, "log": messages.append}, state_path=state_path)
    assert any("resuming" in m for m in messages)
    for key in ("clean_acc", "robust_acc", "per_sample"):
        assert resumed[key] == straight[key]
    assert ({k: v["robust_acc"] for k, v in resumed["attacks"].items()}
            == {k: v["robust_acc"] for k, v in straight["attacks"].items()})


@pytest.mark.parametrize("changed", [{"eps": 0.2}, {"channels_last": True}])
def test_changed_setting_starts_fresh_with_a_message(tmp_path: Path, changed: dict[str, object]) -> None:
    data = dataset([0.1, 0.45, 0.9])
    state_path = tmp_path / "s.state.json"
    kwargs: dict[str, Any] = dict(attacks=["pgd-3"], eps=0.1, device="cpu", state_path=state_path)
    evaluate_model(ThresholdModel(), data, **kwargs, log=lambda _: None)
    messages: list[str] = []
    evaluate_model(ThresholdModel(), data, **{**kwargs, **changed}, log=messages.append)
    assert any("settings changed" in m and next(iter(changed)) in m for m in messages)


def test_every_record_has_the_robustbench_style_block() -> None:
    """Not only outside models: an in-memory model's record carries ``model_info`` over the requested attacks."""
    record = evaluate_model(ThresholdModel(), dataset([0.1, 0.45, 0.9]), attacks=["FGSM", "pgd-3"], eps=0.1,
                            device="cpu", checks=False, log=lambda _: None)
    info = record["model_info"]
    assert info["robust_acc_attacks"] == ["fgsm", "pgd-3"] and info["autoattack_acc"] is None
    assert (info["clean_acc"], info["robust_acc"]) == (round(100 * record["clean_acc"], 2),
                                                       round(100 * record["robust_acc"], 2))
    assert info["threat_model"] == "Linf" and "(no autoattack)" in info["attack_version"]


def test_eps_labels() -> None:
    assert eps_label(8 / 255) == "8/255"
    assert eps_label(0.1) == "0.1"
    assert eps_label(0.5) == "0.5"


# The reference AutoAttack's (pyautoattack 0.2.0) _set_version: attacks_to_run and their settings.
REFERENCE_VERSIONS = {"autoattack": ["apgd-ce", "apgd-t", "fab-t", "square"],
                      "autoattack-rand": ["apgd-ce", "apgd-dlr"]}


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_autoattack_versions_are_the_reference_s(norm: str) -> None:
    standard, rand = build_suite(["autoattack", "autoattack-rand"], eps=0.5, norm=norm, step_size=0.1)
    assert [m.name for m in standard.members] == REFERENCE_VERSIONS["autoattack"]
    assert [m.name for m in rand.members] == REFERENCE_VERSIONS["autoattack-rand"]
    assert all(m.params["norm"] == norm for m in (*standard.members, *rand.members))
    assert [m.params.get("eot", 1) for m in standard.members] == [1, 1, 1, 1]
    assert [(m.params["eot"], m.params["restarts"], m.params["steps"]) for m in rand.members] == [(20, 1, 100)] * 2
    assert rand.members[1].params["loss"] == "dlr" and rand.members[1].min_classes == 3


def test_autoattack_versions_match_the_installed_reference() -> None:
    reference = pytest.importorskip("pyautoattack")
    for ours, version in (("autoattack", "standard"), ("autoattack-rand", "rand")):
        adversary = reference.AutoAttack(nn.Linear(2, 2), norm="L2", eps=0.5, version=version, device="cpu")
        assert adversary.attacks_to_run == REFERENCE_VERSIONS[ours]
        if version == "rand":
            assert (adversary.apgd.eot_iter, adversary.apgd.n_restarts) == (20, 1)


class Saturated(nn.Module):
    """A 5-class linear model with logits scaled by 300: the softmax saturates, so the CE gradient is
    exactly zero on confidently classified points and APGD-CE misses them, while the scale-free DLR
    losses of APGD-T still see the way: the standard suite's members really hand samples on."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = LinearClassifier((1, 4, 4), num_classes=5, seed=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 300 * self.linear(x)


def test_standard_autoattack_hands_only_survivors_to_each_next_member() -> None:
    model = Saturated()
    images = (torch.rand(32, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 255).round().to(torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)
    data = ImageDataset(images=images, labels=labels, classes=[str(k) for k in range(5)], name="toy")
    (group,) = build_suite(["autoattack"], eps=0.3, norm="linf", step_size=0.075)
    received: dict[str, torch.Tensor] = {}

    def recording(member: AttackSpec) -> AttackSpec:
        attack = functools.partial(member.fn, queries=300) if member.name == "square" else member.fn  # test time

        def fn(model_: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs: object) -> torch.Tensor:
            received[member.name] = x.clone()
            return attack(model_, x, y, **kwargs)
        return dataclasses.replace(member, fn=fn)

    group = dataclasses.replace(group, members=tuple(recording(m) for m in group.members))
    state = run_suite(model, data, [group], eps=0.3, norm="linf", batch_size=32, device=torch.device("cpu"), seed=0)
    verdict = torch.tensor(state.broken_by["autoattack"])
    assert (verdict == 0).sum() >= 2 and (verdict == 1).sum() >= 10 and (verdict == -1).sum() >= 1
    x = images.float() / 255
    for k, name in enumerate(REFERENCE_VERSIONS["autoattack"]):
        still_robust = (verdict == -1) | (verdict >= k)
        assert torch.equal(received[name], x[still_robust]), name
    after = summarise(state, [group])["attacks"]["autoattack"]["robust_acc_after"]
    assert list(after) == REFERENCE_VERSIONS["autoattack"]
    assert after["apgd-ce"] == pytest.approx(1 - (verdict == 0).float().mean().item())
    assert after["apgd-t"] == pytest.approx((verdict == -1).float().mean().item())


class Noisy(nn.Module):
    """A randomized model: Gaussian noise on the input before a linear map (4 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = LinearClassifier((1, 4, 4), num_classes=4, seed=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x + 0.05 * torch.randn_like(x))


def test_randomized_model_gets_the_rand_version_with_a_flag() -> None:
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert autoattack_version(ThresholdModel(), x, ["pgd-5", "autoattack"]) == (["pgd-5", "autoattack"], None)
    chosen, flag = autoattack_version(Noisy(), x, ["pgd-5", "AutoAttack"])
    assert chosen == ["pgd-5", "autoattack-rand"] and flag is not None and flag.code == "autoattack_rand"
    assert autoattack_version(Noisy(), x, ["apgd-ce-t"]) == (["apgd-ce-t"], None)


def test_rand_version_runs_end_to_end_on_a_randomized_model() -> None:
    model = Noisy()
    images = (torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 255).round().to(torch.uint8)
    with torch.no_grad():
        labels = model.linear(images.float() / 255).argmax(1)
    data = ImageDataset(images=images, labels=labels, classes=[str(k) for k in range(4)], name="toy")
    record = evaluate_model(model, data, attacks=["autoattack"], eps=0.1, batch_size=12, device="cpu", checks=False,
                            log=lambda _: None)
    assert list(record["attacks"]) == ["autoattack-rand"]
    assert record["attack_params"]["autoattack-rand"]["apgd-dlr"]["eot"] == 20
    assert "autoattack_rand" in [f["code"] for f in record["flags"]]
    entry = record["attacks"]["autoattack-rand"]
    assert entry["robust_acc"] < record["clean_acc"] and entry["backward_per_sample"] >= 20


def test_l2_standard_autoattack_runs_end_to_end() -> None:
    model = Saturated()
    images = (torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(2)) * 255).round().to(torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)
    data = ImageDataset(images=images, labels=labels, classes=[str(k) for k in range(5)], name="toy")
    record = evaluate_model(model, data, attacks=["autoattack"], eps=0.5, norm="l2", batch_size=8, device="cpu",
                            checks=False, log=lambda _: None)
    entry = record["attacks"]["autoattack"]
    assert list(entry["robust_acc_after"]) == REFERENCE_VERSIONS["autoattack"] and entry["out_of_bounds"] == 0
    assert entry["robust_acc"] < record["clean_acc"]


class ViewsItsFeatureMap(nn.Module):
    """A model that ``.view()``s a convolution's output: fine in the default format, fails channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        return self.head(z.view(z.shape[0], -1))


def test_channels_last_failure_is_one_line_and_default_format_works() -> None:
    from robustlab.errors import UserError

    data = dataset([0.2, 0.8, 0.3, 0.7])
    kwargs = dict(attacks=["fgsm"], eps=0.05, batch_size=4, device="cpu", checks=False, log=lambda _: None)
    assert evaluate_model(ViewsItsFeatureMap(), data, **kwargs)["channels_last"] is False
    with pytest.raises(UserError, match="fails in channels-last memory format .*without --channels-last"):
        evaluate_model(ViewsItsFeatureMap(), data, **kwargs, channels_last=True)


@pytest.mark.parametrize("group", ["autoattack", "autoattack-rand"])
def test_group_that_ran_reads_the_members_params(group: str) -> None:
    """A record's group is the reference one only if every member lists the reference's settings; the old
    records (no mode / final_search / output listed) and any stronger setting read as the + group."""
    (spec,) = build_suite([group], eps=8 / 255, norm="linf", step_size=2 / 255)
    params = spec.describe()
    assert group_that_ran(group, params) == group
    old = {m: {k: v for k, v in p.items() if k not in ("mode", "final_search", "output")} for m, p in params.items()}
    assert group_that_ran(group, old) == f"{group}+"
    member = next(iter(params))
    stronger = {**params, member: {**params[member], "output": "best"}}
    assert group_that_ran(group, stronger) == f"{group}+"
    (plus,) = build_suite([f"{group}+"], eps=8 / 255, norm="linf", step_size=2 / 255)
    assert group_that_ran(group, plus.describe()) == f"{group}+"
    assert group_that_ran("pgd-20", {}) == "pgd-20"


@pytest.mark.parametrize("group,start", [("autoattack", "surface"), ("autoattack-rand", "surface"),
                                         ("autoattack+", "ball"), ("autoattack-rand+", "ball")])
def test_apgd_members_start_where_their_group_says(group: str, start: str) -> None:
    """The reference-faithful groups' APGD members start on the ε-ball's surface as the reference's APGD does
    (autopgd_base.py); the + groups keep robustlab's uniform start in the ball. The record lists the choice."""
    (spec,) = build_suite([group], eps=8 / 255, norm="linf", step_size=2 / 255)
    apgds = [m for m in spec.members if m.name.startswith("apgd")]
    assert apgds and all(m.params["start"] == start and m.fn.keywords["start"] == start for m in apgds)
