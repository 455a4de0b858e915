"""Cross-check against the reference AutoAttack (``pyautoattack``, a dev extra) on small digits models.

Our robust accuracy must be within one percentage point of the reference's, or lower, for APGD-CE,
APGD-T, FAB-T and Square alone and standard AutoAttack, under L∞ and L2, and for the ``rand`` version
on a randomized model. Skipped only when ``pyautoattack`` cannot be imported; the L2 Square cases are
skipped while our Square has no L2 version.
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


def reference_accuracy(model: nn.Module, data, attacks: list[str] | None, version: str, norm: str, eps: float) -> float:
    """Robust accuracy under the reference; ``custom`` runs use the standard version's restarts (1)."""
    x = data.images.float() / 255
    y = data.labels
    adversary = pyautoattack.AutoAttack(model, attacks=attacks, eps=eps, norm={"linf": "Linf", "l2": "L2"}[norm],
                                        version=version, device="cpu", seed=0)
    if version == "custom":
        adversary.apgd.n_restarts = 1  # custom defaults to 5
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(y))
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


CASES = {
    "apgd-ce": (["apgd-ce"], "custom"),
    "apgd-t": (["apgd-t"], "custom"),
    "autoattack": (None, "standard"),
}
# FAB-T and Square alone: tests/test_crosscheck_square_fab.py (both models, both norms). The full standard
# suite costs about a minute a case (5,000 Square queries per survivor on both sides), so it runs on one
# model per norm (the natural one under L-inf, the adversarially trained one under L2), on N // 2 samples.
COMBINATIONS = [(m, a, n) for a in ("apgd-ce", "apgd-t") for m in ("natural", "pgd_at") for n in ("linf", "l2")]
COMBINATIONS += [("natural", "autoattack", "linf"), ("pgd_at", "autoattack", "l2")]


@pytest.mark.parametrize("model_name,ours,norm", COMBINATIONS)
def test_ours_is_as_strong_as_the_reference(models, samples, model_name: str, ours: str, norm: str) -> None:
    model = models[model_name].eval()
    if ours == "autoattack":  # the full suite on half the samples (time); one sample is then 2 points
        samples = samples.select(torch.arange(N // 2))
    record = evaluate_model(model, samples, attacks=[ours], eps=EPS[norm], norm=norm, batch_size=len(samples.labels),
                            device="cpu", checks=False, log=lambda _: None)
    ref = reference_accuracy(model, samples, *CASES[ours], norm, EPS[norm])
    assert record["attacks"][ours]["robust_acc"] <= ref + 0.01, (ours, norm, record["attacks"][ours]["robust_acc"], ref)


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


def test_rand_version_is_as_strong_as_the_reference() -> None:
    data = fixed_subset(load_dataset("digits", "test"), N, seed=1)
    model = Noisy(small_mlp(), std=0.1)
    torch.manual_seed(0)
    record = evaluate_model(model, data, attacks=["autoattack"], eps=0.05, batch_size=N, device="cpu",
                            checks=False, log=lambda _: None)
    assert "autoattack_rand" in [f["code"] for f in record["flags"]]  # chosen automatically
    ours = record["attacks"]["autoattack-rand"]["robust_acc"]
    torch.manual_seed(0)
    ref = reference_accuracy(model, data, None, "rand", "linf", 0.05)
    assert ours <= ref + 0.01, (ours, ref)
