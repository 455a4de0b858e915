"""Run metrics: JSON lines (one record per event) and TensorBoard scalars.

Step metrics arrive as device tensors; they are converted to floats only when written (every
``log_every`` steps), so logging costs no host-device sync per step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch


class MetricsLog:
    """Appends ``{"kind": ..., "step": ..., **values}`` lines to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled  # False on the non-main ranks of a distributed run: records are built, not written
        self._tb = None
        if tensorboard and enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, kind: str, step: int, values: dict[str, Any]) -> dict[str, Any]:
        """Record one event; tensors become floats. Returns the written record."""
        record: dict[str, Any] = {"kind": kind, "step": step}
        for key, value in values.items():
            record[key] = value.item() if torch.is_tensor(value) else value
        if not self.enabled:
            return record
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)
            self._tb.flush()
        return record

    def truncate_after(self, step: int) -> None:
        """Drop records newer than ``step`` (written after the checkpoint a resumed run restarts from)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def all_finite(values: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in values.values() if isinstance(v, float))


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (optionally only one kind)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]
