"""The training loop: resume equivalence, checkpoint format, schedules, EMA, NaN handling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_runs import tiny_config

from robustlab.config import ScheduleConfig
from robustlab.errors import UserError
from robustlab.runs.checkpoint import FORMAT_VERSION, checkpoint_path, load_checkpoint, read_metadata, save_checkpoint
from robustlab.runs.metrics import read_metrics
from robustlab.train import Trainer, train
from robustlab.train.ema import ModelEma, ema_decay_at
from robustlab.train.optim import lr_factor


class Killed(Exception):
    """Stands for the process being killed right after an epoch's checkpoint."""


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(run_dir / "checkpoints" / "last.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "ema."))}


@pytest.mark.parametrize("ema", [None, 0.9])
def test_killed_after_an_epoch_then_resumed_equals_uninterrupted(tmp_path: Path, ema: float | None) -> None:
    extra = {"train.ema_decay": "null" if ema is None else ema}
    train(tiny_config(tmp_path, "straight", **extra), log=lambda _: None)

    def kill(epoch: int) -> None:
        raise Killed

    interrupted = tiny_config(tmp_path, "interrupted", **extra)
    with pytest.raises(Killed):
        train(interrupted, log=lambda _: None, after_epoch=kill)
    assert read_metadata(interrupted.run_dir / "checkpoints" / "last.safetensors")["epoch"] == 1
    messages: list[str] = []
    train(interrupted, log=messages.append)
    assert any("resumed" in m for m in messages)

    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "interrupted")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    epochs = [r["epoch"] for r in read_metrics(interrupted.run_dir, "epoch")]
    assert epochs == [1, 2]


def test_checkpoint_is_tensors_only_with_json_header_and_no_temp_files(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, **{"train.epochs": 1})
    train(cfg, log=lambda _: None)
    ckpt_dir = cfg.run_dir / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.json", "best.safetensors", "last.json",
                                                          "last.safetensors"]
    with safe_open(str(ckpt_dir / "last.safetensors"), framework="pt") as fh:
        keys = list(fh.keys())
        meta = json.loads(fh.metadata()["robustlab"])
    assert any(k.startswith("model.") for k in keys) and any(k.startswith("optim.") for k in keys)
    assert meta["epoch"] == 1 and meta["model"]["name"] == "small_cnn"
    assert json.loads((ckpt_dir / "last.json").read_text()) == meta


def test_finished_run_is_not_retrained_and_changed_config_is_refused(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, **{"train.epochs": 1})
    train(cfg, log=lambda _: None)
    messages: list[str] = []
    train(cfg, log=messages.append)
    assert any("already complete" in m for m in messages)
    with pytest.raises(UserError, match="different config"):
        train(tiny_config(tmp_path, **{"train.epochs": 1, "optim.lr": 0.01}), log=lambda _: None)


def test_metrics_are_logged_as_json_lines_and_pgd_at_is_robust_on_digits(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, **{"train.epochs": 3, "model.options": "{width: 16}", "data.batch_size": 64})
    last = train(cfg, log=lambda _: None)
    steps = read_metrics(cfg.run_dir, "step")
    assert steps and {"lr", "loss", "ce_adv", "acc_adv"} <= set(steps[0])
    assert last["clean_acc"] > 0.8 and last["robust_acc"] > 0.3
    assert (cfg.run_dir / "tensorboard").is_dir()


def test_nan_loss_stops_with_a_user_error(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, **{"optim.lr": 1e30, "train.epochs": 1})
    with pytest.raises(UserError, match="loss became"):
        train(cfg, log=lambda _: None)
    assert not (cfg.run_dir / "checkpoints" / "last.safetensors").exists()


def test_piecewise_cosine_and_warmup_schedules() -> None:
    piecewise = ScheduleConfig(name="piecewise", milestones=[0.5, 0.75], gamma=0.1)
    assert ([lr_factor(s, 100, 10, piecewise) for s in (0, 49, 50, 79, 80, 99)]
            == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01]))
    afd = ScheduleConfig(name="piecewise", milestones=[0.5, 0.6, 0.7, 0.8, 0.9], factors=[0.8, 0.4, 0.2, 0.1, 0.05])
    assert [lr_factor(s, 20, 1, afd) for s in (9, 10, 11, 12, 19)] == pytest.approx([1, 0.8, 0.8, 0.4, 0.05])
    cosine = ScheduleConfig(name="cosine", warmup_epochs=1)
    assert [lr_factor(s, 100, 10, cosine) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, 100, 10, cosine) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, cosine) == pytest.approx(0.5)


def test_ema_decay_schedule_and_update() -> None:
    assert ema_decay_at(0, 0.999) == pytest.approx(1 / 10)
    assert ema_decay_at(10, 0.999) == pytest.approx(11 / 20)
    assert ema_decay_at(10**6, 0.999) == pytest.approx(0.999)
    assert ema_decay_at(0, 0.999, warmup=False) == 0.999
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.5, warmup=False)
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked.fill_(7)
    ema.update(model, step=0)
    torch.testing.assert_close(ema.module[0].weight, before + 0.5)
    assert int(ema.module[1].num_batches_tracked) == 7
    assert not ema.module.training


def test_trainer_builds_everything_from_the_config(tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tmp_path, **{"method.name": "trades", "method.options": "{beta: 3}"}),
                      log=lambda _: None)
    assert trainer.method.beta == 3.0
    assert trainer.spec == {
        "name": "small_cnn", "options": {"width": 8}, "num_classes": 10, "in_channels": 1,
        "method": {"name": "trades", "options": {"beta": 3}},
    }
    assert trainer.steps_per_epoch == 1437 // 256
    assert len(Trainer(tiny_config(tmp_path, "all", **{"data.eval_examples": 0})).eval_set.labels) == 360
    assert len(Trainer(tiny_config(tmp_path, "many", **{"data.eval_examples": 5000})).eval_set.labels) == 360


def test_bf16_autocast_channels_last_and_grad_clip_path_runs(tmp_path: Path) -> None:
    """The GPU-oriented options run on CPU too (bf16 autocast exists there): finite loss, sane accuracy."""
    cfg = tiny_config(tmp_path, **{"train.epochs": 1, "train.amp": "bf16", "train.channels_last": "true",
                                   "optim.grad_clip": 1.0, "optim.name": "adamw", "optim.lr": 0.003,
                                   "schedule.name": "cosine", "schedule.warmup_epochs": 0.5})
    last = train(cfg, log=lambda _: None)
    assert math.isfinite(last["train_loss"]) and 0.0 <= last["clean_acc"] <= 1.0


def test_fp16_on_cpu_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        train(tiny_config(tmp_path, **{"train.amp": "fp16", "train.device": "cpu"}), log=lambda _: None)


@pytest.mark.parametrize("method", ["pgd_at", "trades", "mart+fsr", "trades+ancra"])
@pytest.mark.parametrize("attack_amp,attack_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_training_attack_precision_is_its_own_setting(tmp_path: Path, method: str, attack_amp: str,
                                                       attack_dtype: torch.dtype) -> None:
    """Under ``train.amp: bf16`` the attack's forwards (eval mode) run in ``train.attack_amp``; the update's in bf16."""
    cfg = tiny_config(tmp_path, **{"method.name": method, "train.amp": "bf16", "train.attack_amp": attack_amp})
    trainer = Trainer(cfg, log=lambda _: None)
    seen: list[tuple[bool, torch.dtype]] = []
    trainer.model.head.register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
    x, y = next(iter(trainer.loader))
    with trainer.autocast():
        trainer.method.loss(trainer.forward_model, x, y)
    attack = {dtype for training, dtype in seen if not training}
    update = {dtype for training, dtype in seen if training}
    assert attack == {attack_dtype} and update == {torch.bfloat16}


def test_fp16_update_on_cpu_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="train.amp=fp16 needs a CUDA device"):
        Trainer(tiny_config(tmp_path, **{"train.amp": "fp16"}), log=lambda _: None)


def test_a_checkpoint_of_another_format_version_is_not_resumed(tmp_path: Path) -> None:
    """The writer's header carries FORMAT_VERSION; the resume refuses any other version in one line."""
    cfg = tiny_config(tmp_path, **{"train.epochs": 1})
    train(cfg, log=lambda _: None)
    last = checkpoint_path(tmp_path / cfg.name)
    tensors, meta = load_checkpoint(last)
    assert meta["format"] == FORMAT_VERSION
    save_checkpoint(last, tensors, {**meta, "format": FORMAT_VERSION + 1})
    with pytest.raises(UserError, match="not a resumable robustlab training checkpoint"):
        train(cfg, log=lambda _: None)


def test_fp16_attack_on_cpu_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="attack_amp=fp16 needs a CUDA device"):
        Trainer(tiny_config(tmp_path, **{"train.attack_amp": "fp16"}), log=lambda _: None)
