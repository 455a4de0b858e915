"""Fast AT: FGSM-RS and N-FGSM formulas, the cyclic schedule, catastrophic-overfitting watch and stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny_config
from toy_models import LinearClassifier, interior_inputs

from robustlab.cli import main
from robustlab.config import AttackConfig, MethodConfig, ScheduleConfig
from robustlab.errors import UserError
from robustlab.methods import create_method
from robustlab.runs.checkpoint import load_checkpoint
from robustlab.train import loop
from robustlab.train.optim import lr_factor
from robustlab.train.overfit import OverfitWatch

EPS = 0.05


def _craft(name: str, x: torch.Tensor, y: torch.Tensor, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """x' of method ``name`` and the uniform noise U(0, 1) it drew (same seed, drawn again here)."""
    method = create_method(MethodConfig(name=name, attack=AttackConfig(eps=EPS)), torch.Generator().manual_seed(4))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(4))
    return method.craft(model, x, y), u


def _sign_direction(model: LinearClassifier, y: torch.Tensor) -> torch.Tensor:
    """Two classes, linear model: sign ∇ₓCE = sign(w_other − w_y), whatever the point."""
    w = model.weight.detach()
    return torch.sign(w[1 - y] - w[y]).view(-1, 1, 4, 4)


def test_fgsm_rs_is_a_125_eps_step_from_a_uniform_start_projected_to_the_ball() -> None:
    model, x = LinearClassifier(), interior_inputs(64)
    y = torch.arange(64) % 2
    x_adv, u = _craft("fgsm_rs", x, y, model)
    start = x + (2 * u - 1) * EPS
    expected = torch.min(torch.max(start + 1.25 * EPS * _sign_direction(model, y), x - EPS), x + EPS)
    torch.testing.assert_close(x_adv, expected)
    assert (x_adv - x).abs().max() <= EPS + 1e-6


def test_n_fgsm_is_an_eps_step_from_2eps_noise_without_projection() -> None:
    model, x = LinearClassifier(), interior_inputs(64)
    y = torch.arange(64) % 2
    x_adv, u = _craft("n_fgsm", x, y, model)
    expected = x + (2 * u - 1) * 2 * EPS + EPS * _sign_direction(model, y)
    torch.testing.assert_close(x_adv, expected)
    assert EPS * 1.5 < (x_adv - x).abs().max() <= 3 * EPS + 1e-6  # not clipped to the ε-ball


def test_n_fgsm_clips_to_the_image_range_and_trains_on_ce() -> None:
    model, x = LinearClassifier(), torch.zeros(8, 1, 4, 4)
    y = torch.arange(8) % 2
    method = create_method(MethodConfig(name="n_fgsm", attack=AttackConfig(eps=EPS)), torch.Generator().manual_seed(0))
    loss, parts = method.loss(model, x, y)
    x_adv = method.craft(model, x, y)
    assert x_adv.min() >= 0
    assert set(parts) >= {"ce_adv", "acc_adv", "loss"} and loss.item() > 0


def test_fast_methods_are_linf_only() -> None:
    with pytest.raises(UserError, match="norm=linf"):
        create_method(MethodConfig(name="fgsm_rs", attack=AttackConfig(norm="l2")), torch.Generator())


def test_cyclic_schedule_is_one_triangle_peaking_mid_training() -> None:
    cyclic = ScheduleConfig(name="cyclic")
    factors = [lr_factor(s, 100, 10, cyclic) for s in range(100)]
    assert factors[0] == pytest.approx(0.02) and factors[49] == pytest.approx(1.0) and factors[99] == pytest.approx(0.0)
    assert max(factors) == factors[49] and factors[24] == pytest.approx(0.5) and factors[74] == pytest.approx(0.5)


def _record(robust: float, fgsm: float) -> dict[str, float]:
    return {"robust_acc": robust, "fgsm_acc": fgsm}


def test_watch_flags_a_planted_collapse_only() -> None:
    watch = OverfitWatch()
    history = [(0.30, 0.40), (0.38, 0.45), (0.36, 0.44), (0.02, 0.80), (0.01, 0.85), (0.37, 0.46)]
    assert [watch.update(_record(*r)) for r in history] == [False, False, False, True, True, False]
    # a falling FGSM accuracy with the PGD drop is not catastrophic overfitting (e.g. a bad lr spike)
    assert OverfitWatch({"best_robust": 0.4, "last_fgsm": 0.5}).update(_record(0.05, 0.3)) is False
    # a small drop near chance is noise, not a collapse
    assert OverfitWatch({"best_robust": 0.12, "last_fgsm": 0.2}).update(_record(0.05, 0.3)) is False
    # the state round-trips through a checkpoint's metadata
    assert OverfitWatch(watch.state_dict()).state_dict() == watch.state_dict()


def test_stop_on_overfit_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys) -> None:
    planted = iter([(0.5, 0.6), (0.0, 0.9), (0.5, 0.6)])

    def fake_evaluate(self: loop.Trainer) -> dict[str, float]:
        robust, fgsm = next(planted)
        return {"clean_acc": 0.9, "robust_acc": robust, "fgsm_acc": fgsm}

    monkeypatch.setattr(loop.Trainer, "evaluate", fake_evaluate)
    cfg = tiny_config(tmp_path, method="fgsm_rs", **{"train.epochs": 3, "train.stop_on_overfit": "true"})
    record = loop.train(cfg)
    assert record["epoch"] == 2 and record["overfit"] is True
    assert "catastrophic overfitting at epoch 2" in capsys.readouterr().out
    for name in ("last", "best"):
        _, meta = load_checkpoint(cfg.run_dir / "checkpoints" / f"{name}.safetensors")
        assert meta["epoch"] == 1, name
    epochs = [r for r in map(json.loads, (cfg.run_dir / "metrics.jsonl").read_text().splitlines())
              if r.get("kind") == "epoch"]
    assert [r.get("overfit", False) for r in epochs] == [False, True]


@pytest.mark.parametrize("method", ["fgsm_rs", "n_fgsm", "pgd_at+awp"])
def test_new_methods_train_on_digits_through_the_cli(method: str, tmp_path: Path) -> None:
    args = ["train", "digits_pgd_at", f"out_dir={tmp_path}", "--quiet", f"method.name={method}", "schedule.name=cyclic",
            "model.options={width: 8}", "method.attack.steps=2", "data.eval_examples=64", "train.eval_pgd_steps=2",
            "train.epochs=1", "data.batch_size=256"]
    assert main(args) == 0
    rows = (tmp_path / "digits_pgd_at" / "metrics.jsonl").read_text().splitlines()
    last = json.loads(rows[-1])
    assert 0 <= last["fgsm_acc"] <= 1 and last["train_loss"] == last["train_loss"]
    assert (tmp_path / "digits_pgd_at" / "checkpoints" / "last.safetensors").is_file()
