"""Atomic file writes for the whole library: a temp file in the target's folder, fsync, then ``os.replace``.

A reader (or a process resumed after a kill) sees either the old file or the new one, never a torn one.
:func:`atomic_fill` is the one place that does it; :func:`atomic_write` (a file handle),
:func:`atomic_write_bytes` and :func:`atomic_write_text` build on it. It sits below every layer
(``data`` caches, ``runs`` checkpoints and records, ``report`` pages), beside :mod:`robustlab.faults`.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from robustlab.errors import UserError
from robustlab.faults import fault_point

_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_replaceable(path: Path) -> None:
    """Refuse, in one line, a target that is anything but a regular file or absent: ``os.replace`` would turn a
    symlink, a FIFO or a device node (``/dev/null`` when run as root) into a regular file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    for test, kind in _KINDS:
        if test(mode):
            raise UserError(f"{path} is {kind}, not a regular file; robustlab writes only regular files it can "
                            "replace, so choose another output path")


def temp_beside(path: Path) -> tuple[int, str]:
    """A temp file in ``path``'s folder, with the permissions a plain ``open`` would give."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def atomic_fill(path: Path, fill: Callable[[str], Any]) -> None:
    """Publish ``path`` atomically: ``fill(temp_name)`` writes the temp file beside it, which is fsynced and renamed.

    Whatever ``fill`` raises (a failed checksum, an interrupt) removes the temp file and leaves ``path`` as it was.
    A target that exists and is not a regular file is refused before anything is written, and again just before
    the rename (:func:`check_replaceable`).
    """
    check_replaceable(path)
    fd, tmp = temp_beside(path)
    os.close(fd)
    try:
        fill(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        check_replaceable(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """:func:`atomic_fill` through a binary file handle: ``write(fh)`` streams the content."""

    def fill(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            write(fh)

    atomic_fill(path, fill)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (the ``atomic`` fault point between its two halves)."""

    def halves(fh: IO[bytes]) -> None:
        fh.write(data[: len(data) // 2])
        fault_point("atomic", fh)
        fh.write(data[len(data) // 2:])

    atomic_write(path, halves)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
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
