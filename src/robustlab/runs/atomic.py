"""Atomic file writes: a temp file in the target's folder, fsync, then ``os.replace``.

A reader (or a process resumed after a kill) sees either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from robustlab.runs.faults import fault_point


def temp_beside(path: Path) -> tuple[int, str]:
    """A temp file in ``path``'s folder, with the permissions a plain ``open`` would give."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fault_point("atomic", fh)
            fh.write(data[len(data) // 2:])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def remove_stale_temps(folder: Path, names: tuple[str, ...] | None = None) -> int:
    """Delete the temp files a killed writer left in ``folder`` (all, or those of the files ``names``).

    Call only while holding the lock that covers those files, so no live writer loses its temp file.
    """
    patterns = [".*.tmp"] if names is None else [f".{name}.*.tmp" for name in names]
    stale = [t for pattern in patterns for t in folder.glob(pattern)] if folder.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)
