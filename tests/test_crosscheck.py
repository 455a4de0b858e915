"""Cross-check against the reference AutoAttack (``pyautoattack``, a dev extra) on small digits models.

Our robust accuracy must be within one percentage point of the reference's, or lower, for APGD-CE,
APGD-T and standard AutoAttack. Skipped only when ``pyautoattack`` cannot be imported.
"""

from __future__ import annotations


import pytest
import torch

pyautoattack = pytest.importorskip("pyautoattack")

from robustlab.config import build_config  # noqa: E402
from robustlab.data import fixed_subset, load_dataset  # noqa: E402
from robustlab.evaluate import evaluate_model, load_model  # noqa: E402
from robustlab.train import train  # noqa: E402

EPS = 0.1
N = 100


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.nn.Module]:
    """A natural and a PGD-AT small CNN on digits, a few seconds each."""
    out = tmp_path_factory.mktemp("xcheck")
    trained = {}
    for method, epochs in (("natural", 4), ("pgd_at", 6)):
        cfg = build_config({}, [
            f"out_dir={out}", f"name={method}", "model.options={width: 16}", f"method.name={method}",
            f"method.attack.eps={EPS}", "method.attack.steps=5", "method.attack.step_size=0.03",
            f"train.epochs={epochs}", "data.batch_size=64", "optim.lr=0.05", "train.progress=false",
            "data.eval_examples=64", "train.eval_pgd_steps=2",
        ])
        train(cfg, log=lambda _: None)
        trained[method] = load_model(out / method)[0]
    return trained


@pytest.fixture(scope="module")
def samples():
    return fixed_subset(load_dataset("digits", "test"), N, seed=0)


def reference_accuracy(model: torch.nn.Module, data, attacks: list[str] | None, version: str) -> float:
    x = data.images.float() / 255
    y = data.labels
    adversary = pyautoattack.AutoAttack(model, attacks=attacks, eps=EPS, norm="Linf", version=version, device="cpu", seed=0)
    if version == "custom":
        adversary.apgd.n_restarts = 1  # the standard version's setting; custom defaults to 5
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=N)
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("model_name", ["natural", "pgd_at"])
@pytest.mark.parametrize("ours,theirs,version", [
    ("apgd-ce", ["apgd-ce"], "custom"),
    ("apgd-t", ["apgd-t"], "custom"),
    ("autoattack", None, "standard"),
])
def test_ours_is_as_strong_as_the_reference(models, samples, model_name: str, ours: str, theirs, version: str) -> None:
    model = models[model_name].eval()
    record = evaluate_model(model, samples, attacks=[ours], eps=EPS, batch_size=N, device="cpu", log=lambda _: None)
    ref = reference_accuracy(model, samples, theirs, version)
    assert record["attacks"][ours]["robust_acc"] <= ref + 0.01, (ours, record["attacks"][ours]["robust_acc"], ref)
