"""Where an evaluation (or an audit) writes: the record, its ``.state.json`` and ``.lock`` siblings, claimed before any
work.

An evaluation owns three files: the record ``OUT`` (a ``.json`` path), the per-sample state
``OUT.state.json`` and the lock ``OUT.lock`` (:class:`~robustlab.runs.lock.RunLock`); with ``--save-adversarial``
also the adversarial file ``OUT.adv.safetensors`` and the folder of its per-batch side files ``OUT.adv.partial/``
(:mod:`robustlab.evaluate.adversarial`, :mod:`robustlab.evaluate.breaks`). :func:`claim_output`
takes the lock, then refuses (one :class:`~robustlab.errors.UserError` line, before any model runs) when
one of them exists and is not ours: a folder, a file that is not a robustlab record, state or lock
(a user's ``.py`` file, the weights being evaluated, any other JSON). Nothing is written or removed
before the check, so a refused path is left byte-identical. Under its lock it then removes the temp
files a killed writer of these files left.

"Ours" is judged by content: a record is a JSON object with an ``attacks`` mapping and a numeric ``clean_acc``
(:func:`robustlab.runs.record.looks_like_record`); a state one with ``fingerprint`` and ``broken_by`` (an edited
or inconsistent one is ours but not trusted: the resume starts fresh, see
:mod:`robustlab.evaluate.state`); a lock file is empty or holds a pid; an adversarial file is safetensors whose
metadata names robustlab's format; the side-file folder holds nothing but robustlab's side files and temp
files. Deviation: a hand-made JSON file with those keys would be taken for ours.

Each command describes the files it owns by an :class:`Outputs`: an evaluation's are :data:`EVALUATION` (with
``--save-adversarial`` :data:`ADVERSARIAL_EVALUATION`), an audit's :data:`robustlab.evaluate.audit.record.AUDIT`
(its record, its state and the lock), so each claims its own kinds of files.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from robustlab.atomic import remove_stale_temps
from robustlab.errors import UserError
from robustlab.evaluate.adversarial import adversarial_path, is_adversarial_file
from robustlab.evaluate.breaks import PARTIAL_NAME, partial_folder
from robustlab.ownership import Kind, claim_all, json_object
from robustlab.runs.lock import RunLock
from robustlab.runs.record import looks_like_record

STATE_KEYS = ("fingerprint", "broken_by")
LOCK_MAX_BYTES = 32  # a lock file holds at most a pid and a newline

Side = Callable[[Path], Path]  # a side file's (or folder's) path from the record path OUT


def state_path(out: Path) -> Path:
    """The per-sample state beside the record ``out``."""
    return out.with_suffix(".state.json")


def verify_state_of(state: Path) -> Path:
    """The verification's resumable state (``--verify``) beside the evaluation state ``state``."""
    return state.with_suffix(".verify.json")


def verify_state_path(out: Path) -> Path:
    """The verification's resumable state beside the record ``out``."""
    return verify_state_of(state_path(out))


def lock_path(out: Path) -> Path:
    """The lock file beside the record ``out``."""
    return out.with_suffix(".lock")


def _is_state(path: Path) -> bool:
    """A JSON object with a state's ``fingerprint`` and ``broken_by`` (damaged or not: resuming checks the rest)."""
    data = json_object(path)
    return data is not None and all(k in data for k in STATE_KEYS)


def _is_lock_file(path: Path) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    text = data.strip()
    return len(data) <= LOCK_MAX_BYTES and (not text or text.isdigit())


LOCK = Kind("a robustlab lock file", _is_lock_file)


def _is_partial_folder(path: Path) -> bool:
    """A folder holding only per-batch side files and the temp files of their writes."""
    return path.is_dir() and not path.is_symlink() and all(
        p.is_file() and (PARTIAL_NAME.fullmatch(p.name) is not None or (p.name[:1] == "." and p.suffix == ".tmp"))
        for p in path.iterdir())


@dataclass(frozen=True)
class Outputs:
    """The files one command owns beside its record ``OUT``: the record's :class:`~robustlab.ownership.Kind`, the side
    files' paths (from ``OUT``) with theirs, and what the lock names in a refusal.

    ``folders``: side folders (from ``OUT``) with their kinds; a folder is ours when its kind says so, and the temp
    files inside it are cleared under the lock. ``cleared``: files the command may write beside ``OUT`` without
    claiming them in this run, whose stale temp files are cleared under the lock all the same.
    """

    record: Kind
    sides: tuple[tuple[Side, Kind], ...]
    noun: str
    folders: tuple[tuple[Side, Kind], ...] = ()
    cleared: tuple[Side, ...] = ()


EVALUATION = Outputs(
    Kind("a robustlab evaluation record", looks_like_record),
    ((state_path, Kind("a robustlab evaluation state", _is_state)),
     (verify_state_path, Kind("a robustlab verification state", _is_state))),
    "evaluation record",
    cleared=(adversarial_path,),
)
ADVERSARIAL_EVALUATION = Outputs(  # eval --save-adversarial: also the adversarial file and its side-file folder
    EVALUATION.record,
    (*EVALUATION.sides, (adversarial_path, Kind("a robustlab adversarial file", is_adversarial_file))),
    EVALUATION.noun,
    folders=((partial_folder, Kind("a folder of robustlab's adversarial side files", _is_partial_folder)),),
)


def evaluation_outputs(save_adversarial: bool = False) -> Outputs:
    """An evaluation's files: :data:`EVALUATION`, with ``save_adversarial`` :data:`ADVERSARIAL_EVALUATION`."""
    return ADVERSARIAL_EVALUATION if save_adversarial else EVALUATION


def _fix(out: Path) -> str:
    """The fix a refusal of one of ``out``'s files names."""
    return f"pass --out NEW.json (another record path) or move that file away (record {out})"


def check_output(out: Path, outputs: Outputs = EVALUATION) -> None:
    """Refuse ``out`` unless it is a ``.json`` path whose record, side files (and side folders) and lock are absent or
    robustlab's own."""
    if out.suffix != ".json":
        raise UserError(f"--out {out} must be a .json record path (its state and lock files go beside it); pass e.g. "
                        f"--out {out.with_suffix('.json')}")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; pass a record file path such as {out / 'eval.json'}")
    fix = _fix(out)
    claim_all([(out, outputs.record), *((side(out), kind) for side, kind in outputs.sides), (lock_path(out), LOCK)],
              fix)
    for side, kind in outputs.folders:  # folders: claim() takes only regular files
        folder = side(out)
        if (folder.exists() or folder.is_symlink()) and not kind.ours(folder):
            raise UserError(f"{folder} exists and is not {kind.what}, so robustlab never overwrites it; {fix}")


@contextmanager
def claim_output(
    out: Path, *, main: bool = True, log: Callable[[str], None] = print, outputs: Outputs = EVALUATION,
) -> Iterator[Path]:
    """Check ``out`` (:func:`check_output`), hold its lock for the ``with`` block, clear stale temps; yields the state
    path.

    ``main``: False on the non-zero ranks of a torchrun job, which only read (rank 0 checks and locks).
    ``outputs``: the command's files (default: an evaluation's record, state and verification state;
    :func:`evaluation_outputs` with ``--save-adversarial`` adds the adversarial file and its side files).
    """
    if not main:
        yield state_path(out)
        return
    check_output(out, outputs)  # before the lock file is created, so a refused path gains no sibling
    lock = RunLock(lock_path(out))
    stale = lock.acquire(f"{outputs.noun} {out}")
    if stale is not None:
        log(f"took over the lock of process {stale}, which is gone")
    try:
        check_output(out, outputs)  # again under the lock: another process may have written meanwhile
        names = dict.fromkeys((out.name, *(side(out).name for side, _ in outputs.sides),
                               *(side(out).name for side in outputs.cleared)))
        remove_stale_temps(out.parent, tuple(names))
        for side, _ in outputs.folders:
            remove_stale_temps(side(out))
        yield state_path(out)
    finally:
        lock.release()
