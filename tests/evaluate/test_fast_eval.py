"""The ``fast`` protocol and ``--verify K`` (issue 18): planted misses, the gap interval, masking flags.

The planted model is linear on constant grey images, so which samples any attack can break is known
in closed form (breakable iff the margin is below eps * ||w||_1); ``fast`` is crippled by binding its
members' own eps to a hundredth of the budget, so it misses every breakable sample.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_runs import tiny_config
from torch import nn
from toy_models import digits_images, train_digits_mlp

from robustlab.attacks import count_passes
from robustlab.attacks.fast import cosine_sizes, margin_restarts, ranked_targeted, ranked_targets, square_escalating
from robustlab.cli import main
from robustlab.data import ImageDataset
from robustlab.errors import UserError
from robustlab.evaluate import evaluate_model, suite
from robustlab.evaluate.verify import hypergeometric_interval, parse_verify
from robustlab.models.masking import InputStep, ScaledLogits

EPS = 0.1
N, BREAKABLE = 24, 6  # every 4th planted sample is breakable: true gap of a protocol that misses them = 0.25


class Linear2(nn.Module):
    """Two classes, score ``sum(x - 0.5)`` on 4x4 images: class 0 when the score is positive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x.flatten(1) - 0.5).sum(1)
        return torch.stack([s, -s], 1)


def planted() -> ImageDataset:
    """Constant images 0.5 + d: d = 0.05 (margin 0.8 < eps * 16 = 1.6, breakable) or 0.2 (margin 3.2, safe)."""
    d = torch.where(torch.arange(N) % 4 == 0, 0.05, 0.2)
    images = ((0.5 + d).view(N, 1, 1, 1).expand(N, 1, 4, 4) * 255).round().to(torch.uint8)
    return ImageDataset(images=images, labels=torch.zeros(N, dtype=torch.long), classes=["a", "b"], name="planted")


@pytest.fixture
def crippled(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fast`` with each member's eps bound to eps / 100 (a parameter of the member, not of the run)."""
    for name in suite.FAST_MEMBERS:
        fn, fixed = suite.AUTOATTACK_PARTS[name]
        monkeypatch.setitem(suite.AUTOATTACK_PARTS, name, (fn, {**fixed, "eps": EPS / 100}))


def _eval(attacks: list[str], verify: int | str | None = None, seed: int = 0) -> dict:
    return evaluate_model(Linear2(), planted(), attacks=attacks, eps=EPS, batch_size=16, device="cpu", seed=seed,
                          checks=False, verify=verify, log=lambda _: None)


def test_uncrippled_fast_breaks_exactly_the_breakable_samples() -> None:
    record = _eval(["fast"], verify="all")
    assert record["attacks"]["fast"]["robust_acc"] == pytest.approx(1 - BREAKABLE / N)
    assert record["verify"]["broken"] == 0 and record["verify"]["gap_ci95"] == [0.0, 0.0]
    assert not [f for f in record["flags"] if f["code"] == "verify_gap"]


def test_verify_all_equals_the_worst_case_of_both_protocols(crippled: None) -> None:
    record = _eval(["fast"], verify="all")
    reference = _eval(["autoattack"])
    assert record["attacks"]["fast"]["robust_acc"] == 1.0  # the planted miss
    assert record["verify"]["broken"] == BREAKABLE and record["verify"]["sampled"] == N
    assert record["verify"]["gap"] == pytest.approx(BREAKABLE / N)
    assert record["verify"]["gap_ci95"] == pytest.approx([BREAKABLE / N] * 2)  # a census has no sampling error
    robust_aa = set(i for i, v in enumerate(reference["per_sample"]["broken_by"]["autoattack"]) if v == -1)
    robust_fast = set(range(N))
    robust_both = robust_aa & robust_fast
    assert record["robust_acc"] == pytest.approx(len(robust_both) / N) == reference["robust_acc"]
    assert set(record["verify"]["indices"]) - set(record["verify"]["broken_indices"]) == robust_both


def test_verify_k_interval_covers_the_true_gap_and_the_flag_fires(crippled: None) -> None:
    record = _eval(["fast"], verify=8)
    v = record["verify"]
    assert v["sampled"] == 8 and v["survivors"] == N and len(set(v["indices"])) == 8
    lo, hi = v["gap_ci95"]
    assert lo <= BREAKABLE / N <= hi and hi > 0.005
    assert v["gap"] == pytest.approx(v["broken"] / 8)
    assert record["robust_acc"] == pytest.approx((N - v["broken"]) / N)  # the worst case counts the verified breaks
    assert [f for f in record["flags"] if f["code"] == "verify_gap"]
    assert _eval(["fast"], verify=8)["verify"]["indices"] == v["indices"]  # seeded sample
    assert _eval(["fast"], verify=8, seed=1)["verify"]["indices"] != v["indices"]  # random, not the first K


def test_hypergeometric_interval_in_a_large_population_is_the_binomial_one() -> None:
    """Drawing 10 from 100,000 is drawing with replacement: the Clopper-Pearson tables' values."""
    big = 100_000
    assert hypergeometric_interval(0, 10, big)[1] / big == pytest.approx(1 - 0.025 ** (1 / 10), abs=2e-5)
    assert hypergeometric_interval(10, 10, big)[0] / big == pytest.approx(0.025 ** (1 / 10), abs=2e-5)
    lo, hi = hypergeometric_interval(5, 10, big)
    assert (lo / big, hi / big) == pytest.approx((0.1871, 0.8129), abs=1e-4)


@pytest.mark.parametrize("population,sampled", [(40, 10), (60, 30), (25, 24)])
def test_hypergeometric_interval_covers_every_true_count_at_least_95_percent(population: int, sampled: int) -> None:
    """Exact coverage, summed over the law of the observed count: >= 95% for every true count M, and the
    interval narrows as the sample grows to a census (the point)."""
    from scipy.stats import hypergeom

    intervals = [hypergeometric_interval(b, sampled, population) for b in range(sampled + 1)]
    for marked in range(population + 1):
        law = hypergeom(population, marked, sampled)
        coverage = sum(law.pmf(b) for b, (lo, hi) in enumerate(intervals) if lo <= marked <= hi)
        assert coverage >= 0.95 - 1e-9, (marked, coverage)
    assert hypergeometric_interval(3, population, population) == (3, 3)
    wide, narrow = hypergeometric_interval(2, sampled // 2, population), hypergeometric_interval(4, sampled, population)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


@pytest.mark.parametrize("bad", ["0", "-3", "ten", "2.5"])
def test_bad_verify_values_are_one_line_user_errors(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match="--verify"):
        parse_verify(bad)
    assert main(["eval", "runs/none", "--attacks", "fast", "--verify", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert "--verify" in err and len(err.splitlines()) == 1


def test_ranked_targets_follow_the_linearised_distance_not_the_logit() -> None:
    """Class 1 has the larger logit but a flat boundary; class 2 is nearer along the input: MALT picks 2."""
    w = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 10.0]])
    b = torch.tensor([1.0, 0.5, -1.0])
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        model[1].weight.copy_(w)
        model[1].bias.copy_(b)
    x = torch.full((1, 1, 1, 2), 0.05)
    assert ranked_targets(model, x, torch.tensor([0]), norm="linf", candidates=2).tolist() == [[2, 1]]


class _Rounds:
    """A stand-in for the targeted member's APGD attempt: records each round's (sample count, objective) and
    breaks the first ``wins[r]`` samples of round ``r``."""

    def __init__(self, wins: list[int]) -> None:
        self.wins, self.rounds, self.targets, self.steps = wins, [], [], []

    def __call__(self, model, x, y, target, eps, *, objective, steps, **_):
        r, n = len(self.rounds), y.shape[0]
        self.rounds.append((n, objective))
        self.targets.append(target)
        self.steps.append(steps)
        ok = torch.arange(n) < (self.wins[r] if r < len(self.wins) else 0)
        return torch.where(ok.view(-1, 1, 1, 1), 1 - x, x), ok, torch.zeros(n, dtype=torch.float64)


class _Ten(nn.Module):
    """Ten classes on 4x4 images: class 0 wins above grey, class 1 below it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x.flatten(1) - 0.5).sum(1, keepdim=True)
        return torch.cat([s, -s, -s - torch.arange(1.0, 9.0)], 1)


@pytest.mark.parametrize("wins, min_yield, rounds", [
    ([0] * 9, 0.01, 2),  # nothing pays: the first min_targets ranks only
    ([1] * 9, 0.01, 9),  # every rank pays: all of them
    ([2, 0, 0, 0], 0.05, 3),  # 2 of 20, then 2 of 38 (5.3%), then 2 of 56 (3.6% < 5%): the pooled yield stops it
])
def test_targeted_ranks_go_on_while_they_pay(monkeypatch: pytest.MonkeyPatch, wins, min_yield, rounds) -> None:
    import robustlab.attacks.fast as fast
    from robustlab.attacks.losses import dlr_targeted

    fake = _Rounds(wins)
    monkeypatch.setattr(fast, "_apgd_attempt", fake)
    x = torch.full((20, 1, 4, 4), 0.7)
    ranked_targeted(_Ten(), x, torch.zeros(20, dtype=torch.long), eps=EPS, min_targets=2, max_targets=len(wins),
                    min_yield=min_yield, generator=torch.Generator().manual_seed(0))
    assert len(fake.rounds) == rounds
    # MALT's order is the logits' here (equal gradients)
    assert [int(t[-1]) for t in fake.targets] == list(range(1, rounds + 1))
    assert [n for n, _ in fake.rounds] == [20 - sum(wins[:r]) for r in range(rounds)]  # each rank on the survivors
    assert all(objective is dlr_targeted for _, objective in fake.rounds)  # APGD-T's loss at >= 4 classes


@pytest.mark.parametrize("wins, rounds", [
    ([0] * 10, 2),  # the sweep breaks nothing: then the first min_targets ranks only
    ([18] + [0] * 9, 9),  # it broke 18 of its 180 pairs (10%): the pooled yield carries every rank
])
def test_the_sweep_tries_every_candidate_target_first(monkeypatch: pytest.MonkeyPatch, wins, rounds) -> None:
    """sweep_steps: one short attempt on each (sample, candidate target) pair in one batch before the ranked
    rounds, its pairs in the pooled yield (a digits sample broke only at the target MALT ranked 6th)."""
    import robustlab.attacks.fast as fast

    fake = _Rounds(wins)
    monkeypatch.setattr(fast, "_apgd_attempt", fake)
    x = torch.full((20, 1, 4, 4), 0.7)
    ranked_targeted(_Ten(), x, torch.zeros(20, dtype=torch.long), eps=EPS, steps=50, min_targets=2, max_targets=9,
                    min_yield=0.01, sweep_steps=5, generator=torch.Generator().manual_seed(0))
    assert fake.steps == [5] + [50] * rounds
    assert fake.rounds[0][0] == 20 * 9  # every sample at each of the 9 candidates
    assert sorted(fake.targets[0].tolist()) == sorted(list(range(1, 10)) * 20)
    assert [n for n, _ in fake.rounds[1:]] == [20 - wins[0]] * rounds  # the ranks on the sweep's survivors


def test_square_spends_the_standard_budget_on_all_survivors_when_it_breaks_many(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """6 of 24 planted samples break at once (25%): above escalate_yield a second Square runs the 18
    survivors with escalated_queries; below it, nothing more."""
    import robustlab.attacks.fast as fast

    calls: list[tuple[int, int]] = []
    real = fast.square

    def square(model, x, y, **kwargs):
        calls.append((x.shape[0], kwargs["queries"]))
        return real(model, x, y, **kwargs)

    monkeypatch.setattr(fast, "square", square)
    x, y = planted().images.float() / 255, torch.zeros(N, dtype=torch.long)
    forwards = []
    for escalate_yield in (0.2, 0.3):
        model = Linear2()
        with count_passes(model) as passes:
            x_adv = square_escalating(model, x, y, eps=EPS, queries=10, escalated_queries=50, near_share=0.25,
                                      near_restarts=1, escalate_yield=escalate_yield,
                                      generator=torch.Generator().manual_seed(0))
        assert int((model(x_adv).argmax(1) != y).sum()) == BREAKABLE
        forwards.append(passes.forward)
    first = (24 + 6, 10)  # every sample, and one more run of the nearest quarter
    assert calls == [first, (18, 50), first]
    # the first Square is the same draws in both; the second costs each of its 18 samples a clean forward, its
    # queries and the check of what it broke: 18 x (1 + 50 + 1)
    assert forwards[0] - forwards[1] == 18 * 52


def test_cosine_sizes_follow_a3() -> None:
    sizes = cosine_sizes(20)
    assert sizes[0] == pytest.approx(0.001 + 0.999 * (1 + math.cos(0)) / 2)
    assert sizes[-1] == pytest.approx(0.001 + 0.999 * (1 + math.cos(math.pi * 19 / 21)) / 2)
    assert all(a > b for a, b in zip(sizes, sizes[1:]))
    assert cosine_sizes(10)[-1] > 0.1


def test_a_stuck_descent_stops_at_once() -> None:
    """Zero gradients: the iterate never moves, a cycle of period one, so each restart costs one step."""
    model = InputStep(Linear2())
    x = planted().images.float() / 255
    with count_passes(model) as passes:
        margin_restarts(model, x, torch.zeros(N, dtype=torch.long), eps=EPS, steps=20, restarts=1)
    assert passes.backward <= 2 * N


def test_square_escalates_only_when_gradients_vanish() -> None:
    x, y = planted().images.float() / 255, torch.zeros(N, dtype=torch.long)
    safe = x[1:2]  # not breakable, so Square spends its whole budget
    for model, queries in ((Linear2(), 30), (InputStep(Linear2()), 90)):
        with count_passes(model) as passes:
            square_escalating(model, safe, y[:1], eps=EPS, queries=30, escalated_queries=90, near_share=0,
                              generator=torch.Generator().manual_seed(0))
        # the gradient probe, the clean check, the queries, then the check of what they broke
        assert passes.forward == queries + 3


def test_square_runs_again_only_on_the_samples_nearest_the_boundary() -> None:
    """Four safe samples at different margins: with 3 restarts on the nearest quarter, the one Square batch
    holds the four samples and 3 more rows of the nearest one (d = 0.12), each row with its own draws."""
    d = torch.tensor([0.3, 0.12, 0.4, 0.2])  # margins 16 d - all above eps * 16, so none breaks
    x = (0.5 + d).view(4, 1, 1, 1).expand(4, 1, 4, 4).contiguous()
    y = torch.zeros(4, dtype=torch.long)
    seen: list[torch.Tensor] = []
    model = Linear2()
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].flatten(1).clone()))
    square_escalating(model, x, y, eps=EPS, queries=10, near_share=0.25, near_restarts=3,
                      generator=torch.Generator().manual_seed(0))
    assert len(seen) == 1 + 1 + 10 + 1  # the gradient probe, the clean rows, 10 queries, the check of the result
    assert seen[1][:, 0].tolist() == pytest.approx([0.8, 0.62, 0.9, 0.7, 0.62, 0.62, 0.62])
    queried = torch.stack(seen[2:-1])  # (queries, rows, pixels)
    copies = [queried[:, r] for r in (1, 4, 5, 6)]
    assert all(not torch.equal(a, b) for i, a in enumerate(copies) for b in copies[i + 1:])  # their own draws


def test_fast_is_listed_with_its_members() -> None:
    spec = suite.build_attack("fast", eps=EPS, norm="linf", step_size=EPS / 4)
    assert [m.name for m in spec.members] == ["fast-margin", "fast-targeted", "fast-square"]
    assert "fast" in suite.ATTACK_FORMS and "fast-square" in suite.ATTACK_FORMS


@pytest.fixture(scope="module")
def digits_model() -> tuple[nn.Module, ImageDataset]:
    """An FGSM-trained digits MLP (eps 0.1, 8 epochs of 1,400 digits; seconds) and 96 held-out test digits."""
    x, y = digits_images()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    train, test = perm[:1400], perm[1400:1496]
    batches = [train[torch.randperm(len(train), generator=g)][i:i + 100]
               for _ in range(8) for i in range(0, len(train), 100)]
    model = train_digits_mlp(x, y, batches, g, fgsm_eps=EPS)
    images = (x[test] * 255).round().to(torch.uint8)
    return model, ImageDataset(images=images, labels=y[test], classes=[str(c) for c in range(10)], name="digits")


@pytest.mark.parametrize("wrapper, expected",
                         [(ScaledLogits, {"zero_gradients"}), (InputStep, {"zero_gradients", "black_box"})])
def test_masking_checks_fire_under_fast_alone(
    digits_model: tuple[nn.Module, ImageDataset], wrapper: type, expected: set[str],
) -> None:
    model, data = digits_model
    record = evaluate_model(wrapper(model), data, attacks=["fast"], eps=EPS, batch_size=96, device="cpu",
                            log=lambda _: None)
    codes = {f["code"] for f in record["flags"]}
    assert expected <= codes, codes
    if wrapper is InputStep:
        assert record["checks"]["black_box"].get("group") == "fast"  # fast's own Square was compared


def test_a_refilled_working_batch_gives_the_same_points(digits_model: tuple[nn.Module, ImageDataset]) -> None:
    """Samples join a refilled batch on their own schedule, so the batch size changes nothing per sample."""
    model, data = digits_model
    x, y = data.images[:40].float() / 255, data.labels[:40]
    runs = []
    for batch in (None, 7):
        with count_passes(model) as passes:
            x_adv = margin_restarts(model, x, y, eps=EPS, steps=10, batch=batch,
                                    generator=torch.Generator().manual_seed(0))
            runs.append((x_adv, passes.backward))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[1][1] <= runs[0][1] * 1.15  # at most a gradient at some samples' last step more


def test_stacked_targets_break_what_the_sequence_breaks(digits_model: tuple[nn.Module, ImageDataset]) -> None:
    model, data = digits_model
    x, y = data.images[:40].float() / 255, data.labels[:40]
    broken = []
    for stack in (False, True):
        x_adv = ranked_targeted(model, x, y, eps=EPS, steps=10, stack=stack, generator=torch.Generator().manual_seed(0))
        assert (x_adv - x).abs().amax() <= EPS + 1e-6
        broken.append(model(x_adv).argmax(1) != y)
    assert broken[0].any() and torch.equal(broken[0], broken[1])


def test_cli_eval_fast_verify_writes_the_gap_into_the_record(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from robustlab.train import train

    cfg = tiny_config(tmp_path, name="tiny", method="natural")
    train(cfg, log=lambda _: None)
    out = tmp_path / "record.json"
    args = ["eval", str(cfg.run_dir), "--attacks", "fast", "--verify", "3", "--n-examples", "24", "--eps", "0.02",
            "--no-checks", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    record = json.loads(out.read_text())
    v = record["verify"]
    assert v["k"] == 3 and v["sampled"] == min(3, v["survivors"]) and v["protocol"] == "autoattack"
    assert record["robust_acc"] == pytest.approx((v["survivors"] - v["broken"]) / 24)
    assert "verify autoattack" in capsys.readouterr().out
