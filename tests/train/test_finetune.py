"""Fine-tuning workflow (AFD and vanilla AFT), EMA from the source, resume, feature gap, bundled configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustlab.config import BUNDLED, build_config, load_config
from robustlab.data import load_dataset
from robustlab.errors import UserError
from robustlab.methods.afd import DisentangledHead
from robustlab.runs.checkpoint import load_checkpoint, unprefixed
from robustlab.runs.metrics import read_metrics
from robustlab.runs.model import load_model
from robustlab.train import train
from robustlab.train.feature_gap import feature_gap
from robustlab.train.finetune import finetune, prepare_finetune

TINY = [
    "model.name=small_cnn", "model.options={width: 8}", "method.attack.eps=0.1", "method.attack.steps=2",
    "method.attack.step_size=0.05", "data.batch_size=256", "data.eval_examples=64", "train.eval_pgd_steps=2",
    "train.progress=false", "train.log_every=2", "optim.lr=0.05",
]



def _cfg(root: Path, name: str, method: str, *extra: str):
    return build_config({}, [f"out_dir={root}", f"name={name}", f"method.name={method}", *TINY, *extra])


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A naturally trained digits model (2 tiny epochs): the teacher and starting point."""
    root = tmp_path_factory.mktemp("source")
    cfg = _cfg(root, "natural", "natural", "train.epochs=2", "train.checkpoint_rule=clean_acc")
    train(cfg, log=lambda _: None)
    return cfg.run_dir


def _quiet(_: str) -> None:
    return None


def test_student_and_ema_start_as_the_source(tmp_path: Path, source: Path) -> None:
    trainer = prepare_finetune(_cfg(tmp_path, "afd", "afd", "train.ema_decay=0.999"), source, log=_quiet)
    src, _ = load_model(source)
    x = torch.rand(6, 1, 8, 8)
    trainer.model.eval()
    torch.testing.assert_close(trainer.model(x), src(x), rtol=0, atol=0)
    torch.testing.assert_close(trainer.ema.module(x), src(x), rtol=0, atol=0)
    assert isinstance(trainer.model.head, DisentangledHead)
    assert trainer.method.teacher is not None and not trainer.method.teacher.training
    torch.testing.assert_close(trainer.method.teacher(x), src(x), rtol=0, atol=0)


def test_afd_finetune_end_to_end_reloads_without_the_teacher(tmp_path: Path, source: Path) -> None:
    cfg = _cfg(tmp_path, "afd", "afd", "train.epochs=1", "train.ema_decay=0.999")
    record = finetune(cfg, source, log=_quiet)
    assert record["epoch"] == 1 and "train_teacher_cos" in record
    model, meta = load_model(cfg.run_dir)
    assert meta["weights"] == "ema" and isinstance(model.head, DisentangledHead)
    tensors, _ = load_checkpoint(cfg.run_dir / "checkpoints" / "last.safetensors")
    assert set(unprefixed("model", tensors)) == set(model.state_dict())  # no teacher entries
    assert not any("teacher" in k for k in tensors)
    gaps = read_metrics(cfg.run_dir, "feature_gap")
    assert [r["epoch"] for r in gaps] == [0, 1] and all(r["feature_gap"] > 0 for r in gaps)
    assert (cfg.run_dir / "finetune.json").is_file()


def test_vanilla_aft_finetune_end_to_end(tmp_path: Path, source: Path) -> None:
    cfg = _cfg(tmp_path, "vaft", "pgd_at", "train.epochs=1", "train.ema_decay=0.999")
    finetune(cfg, source, log=_quiet, probe_examples=0)
    model, meta = load_model(cfg.run_dir)
    assert meta["weights"] == "ema" and type(model.head) is torch.nn.Linear
    assert read_metrics(cfg.run_dir, "feature_gap") == []


def test_ema_follows_the_warmup_formula_from_the_source_weights(tmp_path: Path, source: Path) -> None:
    """One step (the whole train split in one batch): ema = d·w0 + (1 − d)·w1 with d = min(0.999, 1/10)."""
    cfg = _cfg(tmp_path, "ema", "afd", "train.epochs=1", "train.ema_decay=0.999", "data.batch_size=2048")
    trainer = prepare_finetune(cfg, source, log=_quiet)
    assert trainer.steps_per_epoch == 1
    w0 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit(after_epoch=None)
    tensors, _ = load_checkpoint(cfg.run_dir / "checkpoints" / "last.safetensors")
    live, ema = unprefixed("model", tensors), unprefixed("ema", tensors)
    d = min(0.999, (0 + 1) / (0 + 10))
    differs = False
    for key, w1 in live.items():
        if w1.is_floating_point():
            torch.testing.assert_close(ema[key], d * w0[key] + (1 - d) * w1, rtol=1e-5, atol=1e-6, msg=key)
            differs |= not torch.equal(ema[key], w1)
        else:
            assert torch.equal(ema[key], w1)
    assert differs


class Killed(Exception):
    pass


def test_resumed_finetune_equals_uninterrupted_and_is_not_reinitialised(tmp_path: Path, source: Path) -> None:
    extra = ("train.epochs=2", "train.ema_decay=0.999")
    finetune(_cfg(tmp_path, "straight", "afd", *extra), source, log=_quiet)

    def kill(epoch: int) -> None:
        raise Killed

    cfg = _cfg(tmp_path, "interrupted", "afd", *extra)
    with pytest.raises(Killed):
        finetune(cfg, source, log=_quiet, after_epoch=kill)
    messages: list[str] = []
    finetune(cfg, source, log=messages.append)
    assert any("resumed" in m for m in messages) and not any("fine-tuning from" in m for m in messages)
    a, _ = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.safetensors")
    b, _ = load_checkpoint(cfg.run_dir / "checkpoints" / "last.safetensors")
    for key in (k for k in a if k.startswith(("model.", "ema."))):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert [r["epoch"] for r in read_metrics(cfg.run_dir, "feature_gap")] == [0, 1, 2]

    other_root = tmp_path / "other"
    other = _cfg(other_root, "natural", "natural", "train.epochs=1", "seed=3")
    train(other, log=_quiet)
    with pytest.raises(UserError, match="same --from"):
        finetune(_cfg(tmp_path, "interrupted", "afd", "train.epochs=3", "train.ema_decay=0.999"), other.run_dir,
                 log=_quiet)


def test_source_of_another_architecture_is_refused(tmp_path: Path, source: Path) -> None:
    cfg = build_config({}, [f"out_dir={tmp_path}", "name=wide", "method.name=afd", *TINY, "model.options={width: 16}"])
    with pytest.raises(UserError, match="same architecture"):
        finetune(cfg, source, log=_quiet)


def test_feature_gap_is_positive_and_zero_without_a_budget(source: Path) -> None:
    model, _ = load_model(source)
    data = load_dataset("digits", "test")
    x, y = data.images[:32].float() / 255, data.labels[:32]
    model.train()
    gap = feature_gap(model, x, y, eps=0.1, steps=3, step_size=0.05)
    assert model.training  # mode restored
    assert gap > 0 and torch.isfinite(torch.tensor(gap))
    assert feature_gap(model, x, y, eps=0.1, steps=3, step_size=0.05) == gap  # seeded, repeatable
    assert feature_gap(model, x, y, eps=0.0, steps=3, step_size=0.05) == 0.0


MINE = [
    "digits_finetune_pgd_at", "digits_finetune_afd", "digits_pgd_at_uad", "digits_trades_uad",
    "cifar10_resnet18_natural", "cifar10_resnet18_afd", "cifar10_wrn34_10_natural", "cifar10_wrn34_10_afd",
    "cifar10_resnet18_pgd_at_uad", "cifar10_wrn34_10_trades_uad",
    "cifar10_resnet18_finetune_pgd_at", "cifar10_wrn34_10_finetune_pgd_at",
]


@pytest.mark.parametrize("name", MINE)
def test_bundled_configs_load(name: str) -> None:
    assert (BUNDLED / f"{name}.yaml").is_file()
    cfg = load_config(name)
    assert cfg.name == name
    if name.startswith("cifar10"):
        assert cfg.data.name == "cifar10" and cfg.data.crop_padding == 4 and cfg.data.flip
        assert cfg.method.attack.eps == pytest.approx(8 / 255) and cfg.method.attack.step_size == pytest.approx(2 / 255)
    if "afd" in name or "finetune" in name:
        assert cfg.train.ema_decay == 0.999 and cfg.train.ema_warmup
    if name.startswith("cifar10") and ("afd" in name or "finetune" in name):
        assert cfg.train.epochs == 20 and cfg.optim.lr == 0.025 and cfg.optim.weight_decay == 5e-4
        lrs = [cfg.optim.lr * f for f in cfg.schedule.factors]
        assert lrs == pytest.approx([0.02, 0.01, 0.005, 0.0025, 0.00125])
        assert cfg.schedule.milestones == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])


def test_only_rank_zero_writes_the_finetune_record(tmp_path: Path, source: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun every rank prepares the fine-tune, but rank 0's ``fit()`` clears stale temp files in the
    run folder: a second writer's in-flight temp file vanished under it. Rank 1 (simulated in this process,
    the run folder made as rank 0 would) must write nothing; rank 0 writes the record."""
    from robustlab.runs.ranks import Ranks
    from robustlab.train import loop

    cfg = _cfg(tmp_path, "afd_ranks", "afd", "train.epochs=1")
    cfg.run_dir.mkdir(parents=True)
    monkeypatch.setattr(loop, "ranks_from_env", lambda: Ranks(rank=1, world=2))
    monkeypatch.setattr(loop, "join", lambda ranks, device: device)
    monkeypatch.setattr(loop, "barrier", lambda ranks: None)
    monkeypatch.setattr(loop, "wrap", lambda model, ranks, device: model)
    prepare_finetune(cfg, source, log=_quiet)
    assert not (cfg.run_dir / "finetune.json").exists()
    monkeypatch.setattr(loop, "ranks_from_env", lambda: Ranks())
    prepare_finetune(cfg, source, log=_quiet)
    assert (cfg.run_dir / "finetune.json").is_file()
