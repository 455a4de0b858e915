"""A tiny training config shared by the tests: a narrow small_cnn on digits, 2-step attacks, seconds per run."""

from __future__ import annotations

from pathlib import Path

from robustlab.config import RunConfig, build_config


def tiny_config(tmp_path: Path, name: str = "run", method: str = "pgd_at", **extra: object) -> RunConfig:
    """``method`` on digits with small_cnn width 8; ``extra`` are further ``key=value`` overrides."""
    overrides = [
        f"out_dir={tmp_path}", f"name={name}", "model.name=small_cnn", "model.options={width: 8}",
        f"method.name={method}", "method.attack.eps=0.1", "method.attack.steps=2", "method.attack.step_size=0.05",
        "data.batch_size=256", "data.eval_examples=64", "train.epochs=2", "train.eval_pgd_steps=2",
        "train.progress=false", "train.log_every=2", "optim.lr=0.05",
    ]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return build_config({}, overrides)
