"""Run metrics: JSON lines (one record per event) and TensorBoard scalars.

Step metrics arrive as device tensors; they are converted to floats only when written (every
``log_every`` steps), so logging costs no host-device sync per step.

A process killed while appending leaves a torn last line: readers skip lines that are not whole JSON
records, and a resumed run rewrites the log (atomically) without them and without the records newer
than its checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from robustlab.atomic import atomic_write_text
from robustlab.faults import fault_point


class MetricsLog:
    """Appends ``{"kind": ..., "step": ..., **values}`` lines to ``metrics.jsonl`` and mirrors scalars to
    TensorBoard."""

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
        line = self._separator() + json.dumps(record) + "\n"
        with self.path.open("a") as fh:
            fh.write(line[: len(line) // 2])
            fault_point("metrics", fh)
            fh.write(line[len(line) // 2:])
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)
            self._tb.flush()
        return record

    def _separator(self) -> str:
        """A newline when the log ends in a torn line (a killed writer), so the next record stays whole."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return ""
        with self.path.open("rb") as fh:
            fh.seek(-1, 2)
            return "" if fh.read(1) == b"\n" else "\n"

    def truncate_after(self, step: int) -> None:
        """Drop records newer than ``step`` (written after the checkpoint a resumed run restarts from)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in _records(self.path) if isinstance(r.get("step"), int) and r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (optionally only one kind)."""
    return read_metrics_file(Path(run_dir) / "metrics.jsonl", kind)


def read_metrics_file(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a metrics log at ``path`` under any name (e.g. a copied one); [] when it is missing."""
    if not path.exists():
        return []
    return [r for r in _records(path) if kind is None or r.get("kind") == kind]


def _records(path: Path) -> list[dict[str, Any]]:
    """The whole JSON records of a metrics log; a torn or foreign line is skipped."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
