"""The benchmarks' trained models: a bundled config trained once under a folder, found there afterwards."""

from __future__ import annotations

from pathlib import Path

from robustlab.config import load_config
from robustlab.train import train


def trained(config: str, out: Path, overrides: list[str]) -> Path:
    """Train (or resume, or find finished) ``config`` under ``out``; returns the run folder."""
    cfg = load_config(config, [f"out_dir={out}", "train.progress=false", *overrides])
    train(cfg, log=lambda _: None)
    return cfg.run_dir


def data_overrides(scale: str, data_root: str | None) -> list[str]:
    """The config overrides of a benchmark scale: CIFAR-10 needs ``--data-root`` (the JPEG archive or its folder)."""
    if scale != "cifar":
        return []
    if data_root is None:
        raise SystemExit("the CIFAR-10 part needs --data-root PATH/cifar10-jpeg.tar.gz "
                         "(e.g. ../shared/data/cifar10-jpeg.tar.gz)")
    return [f"data.root={data_root}"]
