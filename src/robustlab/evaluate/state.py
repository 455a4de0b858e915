"""Resumable per-sample evaluation state, saved atomically after every attack (and group member) of a batch.

Gaps closed relative to AutoAttack's ``state.py`` (STYLE.md §f): the identity is a fingerprint of
everything that determines the verdicts (model weights hash, resolved attack parameters, ε, norm,
sample indices, seed, batch size, memory format, version); per sample we keep *which* member of an attack broke it;
writes are atomic. A rerun with the same fingerprint continues where the saved state stopped: at batch
``cursor``, after its first ``attack_cursor`` attacks and, inside the next one (a group such as
``autoattack``), after its first ``member_cursor`` members, so a stop loses at most one member's work on
one batch. A changed fingerprint starts fresh with a message; a state whose digest does not match its
content (edited or damaged by hand), or that parses but does not fit (lists of the wrong length,
unknown attacks, a cursor past the end, values out of range) is treated like an unreadable one: a
message and a fresh start, never a traceback or a wrong verdict.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robustlab.atomic import atomic_write_text
from robustlab.runs.record import NOT_RUN

DIGEST_KEY = "digest"  # sha256 of the rest of the saved state (sorted-key JSON)
MAX_MEMBERS = 64  # bound on a group's member index in a saved verdict (autoattack has 4)


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
    attack_cursor: int = 0  # attacks finished on batch `cursor`
    member_cursor: int = 0  # members of attack `attack_cursor` finished on batch `cursor` (its verdicts so far saved)
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
            saved = _parse(path)
            if saved is not None and saved.fingerprint != fingerprint:
                changed = sorted(k for k in fingerprint if fingerprint.get(k) != saved.fingerprint.get(k))
                log(f"settings changed since {path} ({', '.join(changed)}); starting fresh")
            elif saved is None or not _fits(saved, n, batch_size, attacks):
                log(f"evaluation state {path} is unreadable or inconsistent; starting fresh")
            else:
                if saved.cursor or saved.attack_cursor or saved.member_cursor:
                    log(f"resuming evaluation from {path} at batch {saved.cursor}"
                        + (f", after {saved.attack_cursor} of its attacks" if saved.attack_cursor else ""))
                return saved
        return cls.new(fingerprint, n, batch_size, attacks)

    def save(self, path: Path | None) -> None:
        """Write the state atomically, with a digest of its content (so an edited or damaged file is never trusted)."""
        if path is not None:
            write_digested(path, asdict(self))

    @property
    def done(self) -> bool:
        return self.cursor * self.batch_size >= self.n


def finished_work(state: EvalState, attacks: int) -> int:
    """Sample-attacks already finished in ``state`` (whole batches, plus the finished attacks of the current one)."""
    whole = min(state.cursor * state.batch_size, state.n)
    current = min(state.batch_size, state.n - whole)
    return whole * attacks + state.attack_cursor * current


def _ints(values: Any, n: int, low: int, high: int) -> bool:
    return (isinstance(values, list) and len(values) == n
            and all(type(v) is int and low <= v <= high for v in values))


def _parse(path: Path) -> EvalState | None:
    """The state saved at ``path`` when it parses into an :class:`EvalState` with a fingerprint mapping, else None."""
    raw = read_digested(path)
    if raw is None:
        return None
    try:
        saved = EvalState(**{**raw, "costs": {k: AttackCost(**v) for k, v in raw["costs"].items()}})
    except (TypeError, KeyError, AttributeError):
        return None
    return saved if isinstance(saved.fingerprint, dict) else None


def content_digest(content: dict[str, Any]) -> str:
    """sha256 of a state's content as sorted-key JSON (the saved file's ``digest``)."""
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def write_digested(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` to ``path`` atomically as JSON with its :func:`content_digest` under :data:`DIGEST_KEY`."""
    atomic_write_text(path, json.dumps({**content, DIGEST_KEY: content_digest(content)}) + "\n")


def read_digested(path: Path) -> dict[str, Any] | None:
    """The content :func:`write_digested` wrote at ``path`` (digest removed), or None when it is unreadable, not a
    JSON object, or its digest does not match (edited or damaged)."""
    try:
        raw = json.loads(path.read_bytes())
        digest = raw.pop(DIGEST_KEY)
    except (ValueError, TypeError, KeyError, AttributeError, OSError, RecursionError):
        return None
    return raw if digest == content_digest(raw) else None


def _fits(saved: EvalState, n: int, batch_size: int, attacks: list[str]) -> bool:
    """Whether a parsed state fits ``n`` samples, ``batch_size`` and ``attacks`` (lengths, cursors, value ranges)."""
    batches = -(-n // batch_size) if batch_size > 0 else 0
    numbers = (saved.cursor, saved.attack_cursor, saved.member_cursor)
    return (
        saved.n == n and saved.batch_size == batch_size
        and all(type(v) is int and v >= 0 for v in numbers)
        and saved.cursor <= batches and saved.attack_cursor < max(len(attacks), 1)
        and _ints(saved.clean, n, NOT_RUN, 1)
        and isinstance(saved.broken_by, dict) and list(saved.broken_by) == attacks
        and all(_ints(v, n, NOT_RUN, MAX_MEMBERS) for v in saved.broken_by.values())
        and list(saved.costs) == attacks
        and all(isinstance(getattr(c, f), (int, float)) for c in saved.costs.values()
                for f in ("seconds", "forward", "backward", "out_of_bounds"))
        and isinstance(saved.skipped, list) and all(isinstance(s, str) for s in saved.skipped)
    )


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
