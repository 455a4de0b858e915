"""The training loop, checkpoints, EMA, schedules and metrics logging."""

from robustlab.train.loop import Trainer, train

__all__ = ["Trainer", "train"]
