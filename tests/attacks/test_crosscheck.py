"""Cross-check against the reference AutoAttack (``pyautoattack``, a dev extra) on small digits models.

Single members (APGD-CE, APGD-T): our robust accuracy at most the reference's plus one point, L∞ and
L2. Groups: ``autoattack`` equals the reference's ``standard`` version (L∞ and L2) and
``autoattack-rand`` its ``rand`` version, within one sample per 100, both ways; the stronger
``autoattack-rand+`` is at most the reference's plus one sample per 100 (``autoattack+``'s members:
tests/attacks/test_crosscheck_square_fab.py, the full group costs a minute a case). Skipped only
when ``pyautoattack`` cannot be imported. FAB-T and Square alone: tests/attacks/test_crosscheck_square_fab.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pyautoattack = pytest.importorskip("pyautoattack")

from robustlab.config import build_config  # noqa: E402
from robustlab.data import fixed_subset, load_dataset  # noqa: E402
from robustlab.evaluate import evaluate_model, load_model  # noqa: E402
from robustlab.train import train  # noqa: E402

EPS = {"linf": 0.1, "l2": 0.5}
N = 100


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.nn.Module]:
    """A natural and a PGD-AT small CNN on digits, a few seconds each."""
    out = tmp_path_factory.mktemp("xcheck")
    trained = {}
    for method, epochs in (("natural", 4), ("pgd_at", 6)):
        cfg = build_config({}, [
            f"out_dir={out}", f"name={method}", "model.options={width: 16}", f"method.name={method}",
            f"method.attack.eps={EPS['linf']}", "method.attack.steps=5", "method.attack.step_size=0.03",
            f"train.epochs={epochs}", "data.batch_size=64", "optim.lr=0.05", "train.progress=false",
            "data.eval_examples=64", "train.eval_pgd_steps=2",
        ])
        train(cfg, log=lambda _: None)
        trained[method] = load_model(out / method)[0]
    return trained


@pytest.fixture(scope="module")
def samples():
    return fixed_subset(load_dataset("digits", "test"), N, seed=0)


def reference_accuracy(model: nn.Module, data, attacks: list[str] | None, version: str, norm: str, eps: float,
                       seed: int = 0) -> float:
    """Robust accuracy by the reference's own verdicts (``y_adv``: each member's fresh forward, as our
    runner judges); ``custom`` runs use the standard version's restarts (1)."""
    x = data.images.float() / 255
    y = data.labels
    adversary = pyautoattack.AutoAttack(model, attacks=attacks, eps=eps, norm={"linf": "Linf", "l2": "L2"}[norm],
                                        version=version, device="cpu", seed=seed)
    if version == "custom":
        adversary.apgd.n_restarts = 1  # custom defaults to 5
    _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=len(y))
    return (y_adv == y).float().mean().item()


CASES = {
    "apgd-ce": (["apgd-ce"], "custom"),
    "apgd-t": (["apgd-t"], "custom"),
}
COMBINATIONS = [(m, a, n) for a in CASES for m in ("natural", "pgd_at") for n in ("linf", "l2")]


@pytest.mark.parametrize("model_name,ours,norm", COMBINATIONS)
def test_ours_is_as_strong_as_the_reference(models, samples, model_name: str, ours: str, norm: str) -> None:
    model = models[model_name].eval()
    record = evaluate_model(model, samples, attacks=[ours], eps=EPS[norm], norm=norm, batch_size=len(samples.labels),
                            device="cpu", checks=False, log=lambda _: None)
    ref = reference_accuracy(model, samples, *CASES[ours], norm, EPS[norm])
    assert record["attacks"][ours]["robust_acc"] <= ref + 0.01, (ours, norm, record["attacks"][ours]["robust_acc"], ref)


# The full standard suite costs about a minute a case (5,000 Square queries per survivor on both sides), so
# it runs on one model per norm: the natural one under L-inf, the adversarially trained one under L2.
@pytest.mark.parametrize("model_name,norm", [("natural", "linf"), ("pgd_at", "l2")])
def test_autoattack_equals_the_reference_standard_version(models, samples, model_name: str, norm: str) -> None:
    model = models[model_name].eval()
    record = evaluate_model(model, samples, attacks=["autoattack"], eps=EPS[norm], norm=norm,
                            batch_size=N, device="cpu", checks=False, log=lambda _: None)
    ref = reference_accuracy(model, samples, None, "standard", norm, EPS[norm])
    ours = record["attacks"]["autoattack"]["robust_acc"]
    assert 0 < ref < 1, "the setting must leave something to compare"
    assert abs(ours - ref) <= 0.01 + 1e-9, (norm, ours, ref)  # one sample of 100


class Noisy(nn.Module):
    """A randomized defense: Gaussian noise on the input of a trained model at every forward."""

    def __init__(self, model: nn.Module, std: float) -> None:
        super().__init__()
        self.model, self.std = model, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.std * torch.randn_like(x))


def small_mlp() -> nn.Module:
    """An MLP fitted to the digits training split in a second (full-batch Adam), cheap under 20-pass EOT."""
    data = load_dataset("digits", "train")
    x, y = data.images.float() / 255, data.labels
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(mlp.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(mlp(x), y).backward()
        optimizer.step()
    return mlp.eval()


RAND_SEEDS = (0, 1, 2)


def test_rand_version_equals_the_reference_rand_version() -> None:
    """On a noisy MLP, pooled over seeds (the verdicts of a randomized model are themselves random: on the
    whole digits test set one run's robust accuracy moves by about a point between seeds, so one run
    cannot resolve one sample per 100; three pooled runs' sampling noise is about 0.4 points)."""
    data = load_dataset("digits", "test")
    model = Noisy(small_mlp(), std=0.02)
    ours = {"autoattack-rand": 0.0, "autoattack-rand+": 0.0}
    ref = 0.0
    for seed in RAND_SEEDS:
        torch.manual_seed(seed)
        record = evaluate_model(model, data, attacks=["autoattack", "autoattack-rand+"], eps=0.05,
                                batch_size=len(data.labels), device="cpu", checks=False, seed=seed, log=lambda _: None)
        assert "autoattack_rand" in [f["code"] for f in record["flags"]]  # chosen automatically
        for name in ours:
            ours[name] += record["attacks"][name]["robust_acc"] / len(RAND_SEEDS)
        torch.manual_seed(seed)
        ref += reference_accuracy(model, data, None, "rand", "linf", 0.05, seed=seed) / len(RAND_SEEDS)
    assert 0 < ref < 1, "the setting must leave something to compare"
    assert abs(ours["autoattack-rand"] - ref) <= 0.01, (ours, ref)
    assert ours["autoattack-rand+"] <= ref + 0.01, (ours, ref)
