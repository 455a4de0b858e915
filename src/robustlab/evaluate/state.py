"""Resumable per-sample evaluation state, saved atomically after every batch.

Gaps closed relative to AutoAttack's ``state.py`` (STYLE.md §f): the identity is a fingerprint of
everything that determines the verdicts (model weights hash, resolved attack parameters, ε, norm,
sample indices, seed, batch size, memory format, version); per sample we keep *which* member of an attack broke it;
writes are atomic. A rerun with the same fingerprint continues at the saved batch cursor; a changed
fingerprint starts fresh with a message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robustlab.runs.atomic import atomic_write_text

NOT_RUN = -2  # verdict not computed yet
ROBUST = -1   # no attack (member) broke the sample; k >= 0: member k broke it; clean-wrong samples: ROBUST is never set


@dataclass
class AttackCost:
    seconds: float = 0.0
    forward: int = 0
    backward: int = 0
    out_of_bounds: int = 0


@dataclass
class EvalState:
    """Per-sample verdicts: ``clean`` (1 correct, 0 wrong, -2 not run), ``broken_by[attack]``
    (-2 not run or clean-wrong, -1 robust, k = index of the member that broke it)."""

    fingerprint: dict[str, Any]
    n: int
    batch_size: int
    cursor: int = 0
    clean: list[int] = field(default_factory=list)
    broken_by: dict[str, list[int]] = field(default_factory=dict)
    costs: dict[str, AttackCost] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def new(cls, fingerprint: dict[str, Any], n: int, batch_size: int, attacks: list[str]) -> "EvalState":
        return cls(
            fingerprint=fingerprint, n=n, batch_size=batch_size, clean=[NOT_RUN] * n,
            broken_by={a: [NOT_RUN] * n for a in attacks}, costs={a: AttackCost() for a in attacks},
        )

    @classmethod
    def resume_or_new(
        cls, path: Path | None, fingerprint: dict[str, Any], n: int, batch_size: int, attacks: list[str],
        log: Callable[[str], None] = print,
    ) -> "EvalState":
        """The saved state at ``path`` when its fingerprint matches, else a fresh one (with a message)."""
        if path is not None and path.exists():
            try:
                raw = json.loads(path.read_text())
                saved = cls(**{**raw, "costs": {k: AttackCost(**v) for k, v in raw["costs"].items()}})
            except (json.JSONDecodeError, TypeError, KeyError):
                log(f"evaluation state {path} is unreadable; starting fresh")
            else:
                if saved.fingerprint == fingerprint:
                    if saved.cursor:
                        log(f"resuming evaluation from {path} at batch {saved.cursor}")
                    return saved
                changed = sorted(k for k in fingerprint if fingerprint.get(k) != saved.fingerprint.get(k))
                log(f"settings changed since {path} ({', '.join(changed)}); starting fresh")
        return cls.new(fingerprint, n, batch_size, attacks)

    def save(self, path: Path | None) -> None:
        if path is not None:
            atomic_write_text(path, json.dumps(asdict(self)) + "\n")

    @property
    def done(self) -> bool:
        return self.cursor * self.batch_size >= self.n


def model_hash(model: nn.Module) -> str:
    """sha256 over the model's state (names, shapes, dtypes and values), device independent."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def labels_hash(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the evaluated samples (so another subset or split never resumes this state)."""
    digest = hashlib.sha256()
    digest.update(images.detach().to("cpu").contiguous().numpy().tobytes())
    digest.update(labels.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()
