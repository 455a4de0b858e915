"""Where an evaluation writes: the record, its ``.state.json`` and ``.lock`` siblings, claimed before any work.

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
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from robustlab.atomic import check_replaceable, remove_stale_temps
from robustlab.errors import UserError
from robustlab.evaluate.adversarial import adversarial_path, is_adversarial_file
from robustlab.evaluate.breaks import PARTIAL_NAME, partial_folder
from robustlab.ownership import json_object
from robustlab.runs.lock import RunLock
from robustlab.runs.record import looks_like_record

STATE_KEYS = ("fingerprint", "broken_by")
LOCK_MAX_BYTES = 32  # a lock file holds at most a pid and a newline


def state_path(out: Path) -> Path:
    """The per-sample state beside the record ``out``."""
    return out.with_suffix(".state.json")


def verify_state_path(out: Path) -> Path:
    """The verification's resumable state beside the record ``out`` (``--verify``)."""
    return state_path(out).with_suffix(".verify.json")


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


def _is_partial_folder(path: Path) -> bool:
    """A folder holding only per-batch side files and the temp files of their writes."""
    return path.is_dir() and not path.is_symlink() and all(
        p.is_file() and (PARTIAL_NAME.fullmatch(p.name) is not None or (p.name[:1] == "." and p.suffix == ".tmp"))
        for p in path.iterdir())


def _refusal(path: Path, what: str, out: Path) -> UserError:
    return UserError(f"{path} exists and is {what}, so it is never overwritten; pass --out NEW.json (another record "
                     f"path) or move that file away (record {out})")


def check_output(out: Path, adversarial: bool = False) -> None:
    """Refuse ``out`` unless it is a ``.json`` path whose record, state and lock (``adversarial``: and adversarial
    file and side-file folder) are absent or robustlab's own."""
    if out.suffix != ".json":
        raise UserError(f"--out {out} must be a .json record path (its state and lock files go beside it); pass e.g. "
                        f"--out {out.with_suffix('.json')}")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; pass a record file path such as {out / 'eval.json'}")
    for path, ours, what in ((out, looks_like_record, "not a robustlab evaluation record"),
                             (state_path(out), _is_state, "not a robustlab evaluation state"),
                             (verify_state_path(out), _is_state, "not a robustlab verification state")):
        check_replaceable(path)
        if path.exists() and not ours(path):
            raise _refusal(path, what, out)
    lock = lock_path(out)
    if lock.is_dir() or (lock.exists() and not _is_lock_file(lock)):
        raise _refusal(lock, "not a robustlab lock file", out)
    if adversarial:
        found = adversarial_path(out)
        check_replaceable(found)
        if found.exists() and not is_adversarial_file(found):
            raise _refusal(found, "not a robustlab adversarial file", out)
        folder = partial_folder(out)
        if (folder.exists() or folder.is_symlink()) and not _is_partial_folder(folder):
            raise _refusal(folder, "not a folder of robustlab's adversarial side files", out)


@contextmanager
def claim_output(out: Path, *, main: bool = True, log: Callable[[str], None] = print,
                 adversarial: bool = False) -> Iterator[Path]:
    """Check ``out`` (:func:`check_output`), hold its lock for the ``with`` block, clear stale temps; yields the state
    path. ``adversarial``: the adversarial file and its side files are claimed too.

    ``main``: False on the non-zero ranks of a torchrun job, which only read (rank 0 checks and locks).
    """
    if not main:
        yield state_path(out)
        return
    check_output(out, adversarial)  # before the lock file is created, so a refused path gains no sibling
    lock = RunLock(lock_path(out))
    stale = lock.acquire(f"evaluation record {out}")
    if stale is not None:
        log(f"took over the lock of process {stale}, which is gone")
    try:
        check_output(out, adversarial)  # again under the lock: another process may have written meanwhile
        remove_stale_temps(out.parent, (out.name, state_path(out).name, verify_state_path(out).name,
                                        adversarial_path(out).name))
        if adversarial:
            remove_stale_temps(partial_folder(out))
        yield state_path(out)
    finally:
        lock.release()
