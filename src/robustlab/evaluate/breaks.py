"""The adversarial point of every break, kept while an evaluation runs (``eval --save-adversarial``), resumably.

For each sample the kept point is the one of the *first* attack in suite order that broke it (attacks in the
suite's order, members of a group in theirs; the verification's entries after the suite's), exactly the float32
tensor the runner judged: inside the threat model (:func:`robustlab.evaluate.runner.within_threat_model`) and
misclassified by the forward that gave the verdict.

Design (issue 31): per-batch side files in the folder ``RECORD.adv.partial/`` (``b000012.safetensors`` for the
suite's batch 12, ``verify-b000003.safetensors`` for the verification's batch 3), each rewritten atomically with
every break of its batch so far, *before* the state save that commits those breaks
(:mod:`robustlab.evaluate.state`). Why not inside the state: the state is JSON rewritten after every attack of
every batch, so images in it (or in one side file for the whole run) would make each save grow with the whole
evaluation, quadratic in all; one batch's file is at most one batch of images per save, leaves the state as it
is, and needs no coordination under ``torchrun`` (each rank writes its own batches). Why not recompute on resume:
the attacks are what costs.

Consistency: a side file is written before the state that commits it, so a kill between the two leaves entries
the state does not commit; every reader keeps an entry only when it belongs to that batch and the state commits
it (that attack's verdict for the sample is that member, and no earlier attack broke it). A state to resume with a
committed break whose point no side file holds (written by an evaluation without ``--save-adversarial``, or a side
file deleted or damaged) is not resumed: the evaluation starts fresh, with a message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from robustlab.atomic import atomic_write_bytes
from robustlab.evaluate.state import EvalState
from robustlab.evaluate.suite import AttackSpec

SUITE_PREFIX = "b"
VERIFY_PREFIX = "verify-b"
VERIFY_LABEL = "verify "  # before a verification entry's attack label
PARTIAL_NAME = re.compile(r"(verify-)?b\d{6}\.safetensors")  # what robustlab writes in a partial folder


def partial_folder(out: Path) -> Path:
    """The per-batch side files of the record ``out``: ``RECORD.adv.partial/``."""
    return out.with_suffix(".adv.partial")


def attack_labels(specs: list[AttackSpec], prefix: str = "") -> list[list[str]]:
    """``labels[a][k]``: the name of member ``k`` of attack ``a`` (``group/member`` in a group), after ``prefix``."""
    return [[f"{prefix}{s.name}/{m.name}" for m in s.members] if s.members else [f"{prefix}{s.name}"] for s in specs]


@dataclass
class Break:
    """One kept break: the sample's index in the evaluated set, the attack that made it, its image (float32, CPU)."""

    index: int
    attack: str
    x: torch.Tensor


def _first_breaks(state: EvalState, rows: range) -> dict[int, tuple[int, int]]:
    """``{row: (attack, member)}`` of the first attack ``state`` commits as breaking each of ``rows``."""
    first: dict[int, tuple[int, int]] = {}
    for a, verdicts in enumerate(state.broken_by.values()):
        for row in rows:
            if row not in first and verdicts[row] >= 0:
                first[row] = (a, verdicts[row])
    return first


def _read(path: Path) -> dict[str, torch.Tensor]:
    """A side file's tensors, or none when it is absent, damaged or not shaped as robustlab writes it."""
    try:
        found = load_file(str(path))
    except (FileNotFoundError, SafetensorError, OSError, ValueError, RuntimeError):
        return {}
    keys = ("index", "attack", "member", "x")
    if set(found) != set(keys) or any(found[k].dtype != torch.int64 or found[k].ndim != 1 for k in keys[:3]):
        return {}
    m = found["x"].shape[0] if found["x"].ndim == 4 else -1
    return found if all(found[k].shape[0] == m for k in keys[:3]) and found["x"].dtype == torch.float32 else {}


class BreakKeeper:
    """One stage's kept breaks (the suite's on this process's batches, or the verification's), batch by batch.

    ``indices[row]``: the record index of row ``row`` of the stage's data (what the state's verdicts are indexed
    by); batch ``b`` of the stage covers rows ``b * batch_size ...`` and is saved as ``folder/PREFIX{offset + b}``.
    """

    def __init__(self, folder: Path, prefix: str, indices: torch.Tensor, labels: list[list[str]], batch_size: int,
                 batch_offset: int = 0) -> None:
        self.folder, self.prefix, self.labels = folder, prefix, labels
        self.indices = indices.to("cpu", torch.long)
        self.batch_size, self.batch_offset = batch_size, batch_offset
        self.batch: int | None = None
        self.kept: dict[int, tuple[int, int, torch.Tensor]] = {}  # row -> (attack, member, point)
        self.dirty = False

    def _path(self, batch: int) -> Path:
        return self.folder / f"{self.prefix}{self.batch_offset + batch:06d}.safetensors"

    def _rows(self, batch: int) -> range:
        return range(batch * self.batch_size, min((batch + 1) * self.batch_size, len(self.indices)))

    def _committed(self, state: EvalState, batch: int) -> dict[int, tuple[int, int, torch.Tensor]]:
        """The entries of batch ``batch``'s side file that ``state`` commits (module docs), by row."""
        rows = self._rows(batch)
        first = _first_breaks(state, rows)
        found = _read(self._path(batch)) if first else {}
        kept: dict[int, tuple[int, int, torch.Tensor]] = {}
        if not found:
            return kept
        row_of = {int(self.indices[r]): r for r in rows}
        for i, index in enumerate(found["index"].tolist()):
            row = row_of.get(index)
            made = (int(found["attack"][i]), int(found["member"][i]))
            if row is not None and row not in kept and first.get(row) == made:
                kept[row] = (*made, found["x"][i])
        return kept

    def covers(self, state: EvalState) -> bool:
        """Whether the side files hold the point of every break ``state`` commits in this stage's batches."""
        for batch in range(-(-len(self.indices) // self.batch_size)):
            if set(_first_breaks(state, self._rows(batch))) != set(self._committed(state, batch)):
                return False
        return True

    def begin(self, batch: int, state: EvalState) -> None:
        """Start batch ``batch`` with the breaks ``state`` commits in it (a resumed batch keeps its earlier ones)."""
        self.batch, self.kept, self.dirty = batch, self._committed(state, batch), False

    def add(self, rows: torch.Tensor, attack: int, member: int, x_adv: torch.Tensor) -> None:
        """Keep ``x_adv[j]`` for row ``rows[j]`` unless an earlier attack already broke that sample."""
        for row, point in zip(rows.tolist(), x_adv.detach().to("cpu", torch.float32)):
            if row not in self.kept:
                self.kept[row] = (attack, member, point.contiguous().clone())
                self.dirty = True

    def flush(self) -> None:
        """Write the current batch's side file (atomically) when it gained breaks since the last write."""
        if not self.dirty or self.batch is None:
            return
        rows = sorted(self.kept)
        tensors = {
            "index": self.indices[rows],
            "attack": torch.tensor([self.kept[r][0] for r in rows], dtype=torch.long),
            "member": torch.tensor([self.kept[r][1] for r in rows], dtype=torch.long),
            "x": torch.stack([self.kept[r][2] for r in rows]),
        }
        atomic_write_bytes(self._path(self.batch), save(tensors))
        self.dirty = False

    def collect(self, state: EvalState) -> list[Break]:
        """Every break ``state`` commits, with its kept point, in row order (after the stage has run)."""
        found: list[Break] = []
        for batch in range(-(-len(self.indices) // self.batch_size)):
            for row, (attack, member, x) in sorted(self._committed(state, batch).items()):
                found.append(Break(int(self.indices[row]), self.labels[attack][member], x))
        return found


class Keep:
    """Where an evaluation's stages keep their breaks (``folder``) and what they collected (``breaks``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.breaks: list[Break] = []

    def stage(self, prefix: str, indices: torch.Tensor, specs: list[AttackSpec], batch_size: int,
              batch_offset: int = 0, label: str = "") -> BreakKeeper:
        """A keeper for one stage's batches (module docs)."""
        return BreakKeeper(self.folder, prefix, indices, attack_labels(specs, label), batch_size, batch_offset)

    def resumable(self, keeper: BreakKeeper, state: EvalState, fresh: Callable[[], EvalState],
                  log: Callable[[str], None]) -> EvalState:
        """``state`` when the side files cover its breaks, else ``fresh()`` with a message."""
        if keeper.covers(state):
            return state
        log(f"the evaluation state has breaks whose adversarial points {self.folder} does not hold (an evaluation "
            "without --save-adversarial, or side files removed); starting fresh")
        return fresh()
