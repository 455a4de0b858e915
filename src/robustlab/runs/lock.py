"""One process per run folder: an exclusive ``flock`` on ``<run>/.lock``, which holds the owner's pid.

A second ``robustlab train`` (or ``finetune``) on the same folder is refused with one line naming
the first one's pid. The kernel drops the lock when its process dies (``kill -9`` included), so a
lock file left by a dead process is simply taken over by the next run; nothing has to guess from the
pid whether it is stale. Within one process the lock is shared (counted): a second trainer built in
the same process on the same folder (a test, a notebook) is not refused by its own process.
Deviation: ``flock`` is advisory and POSIX-only; on a network file system without it the lock is best
effort.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from robustlab.errors import UserError

LOCK_NAME = ".lock"
_HELD: dict[str, list[int]] = {}  # resolved lock path -> [fd, holders in this process]


class RunLock:
    """Hold the lock of one run folder (or one output file) until :meth:`release` or process exit."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @classmethod
    def for_run(cls, run_dir: Path) -> "RunLock":
        return cls(Path(run_dir) / LOCK_NAME)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, what: str) -> int | None:
        """Take the lock (no-op when held); returns the pid a stale lock file named, if any.

        ``what`` names the locked thing in the refusal (``run folder runs/x``).
        """
        if self._fd is not None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            self._fd = _HELD[key][0]
            return None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd)
            os.close(fd)
            raise UserError(
                f"{what} is in use by process {owner if owner is not None else '(unknown pid)'} (lock {self.path}); "
                "wait for it to finish or stop it, then rerun"
            ) from None
        previous = _read_pid(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        _HELD[key] = [fd, 1]
        return previous if previous != os.getpid() else None

    def release(self) -> None:
        """Drop the lock; the file stays (an empty-pid file is never mistaken for an owner)."""
        if self._fd is None:
            return
        key = str(self.path.resolve())
        fd, self._fd = self._fd, None
        _HELD[key][1] -= 1
        if _HELD[key][1]:
            return
        del _HELD[key]
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
