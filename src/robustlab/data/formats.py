"""Readers for on-disk dataset formats, returning numpy arrays (uint8 NCHW images, int64 labels).

Every reader turns a malformed file into a one-line :class:`UserError` naming the file, never a
traceback: tar archives and folders, text lines. The data sets' own formats are parsed in their modules
(:mod:`~robustlab.data.cifar`, :mod:`~robustlab.data.svhn`, :mod:`~robustlab.data.npz`).
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from robustlab.errors import UserError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


# --------------------------------------------------------------------------- archives and folders


def is_archive(path: Path) -> bool:
    """Whether ``path`` names a tar archive (plain or compressed) by its suffix."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def member_name(name: str) -> str:
    """An archive member name without a leading ``./`` or ``/``."""
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def corrupt_archive(archive: Path, err: BaseException) -> UserError:
    """The error for an archive that cannot be read to the end."""
    return UserError(f"{archive} is corrupt or truncated ({err}); delete it and download or copy it again")


def stream_archive(archive: Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """Yield ``(name, read)`` for each regular file of a tar archive, in one sequential pass.

    ``read()`` returns the member's bytes and is valid only until the next item is requested.
    Compression (gzip, bz2, xz) is detected from the content.
    """
    try:
        with tarfile.open(archive, "r|*") as tf:
            for member in tf:
                if member.isfile():
                    yield member_name(member.name), _member_reader(tf, member, archive)
    except _TAR_ERRORS as err:
        raise corrupt_archive(archive, err) from None


def _member_reader(tf: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            fh = tf.extractfile(member)
            return fh.read() if fh is not None else b""
        except _TAR_ERRORS as err:
            raise corrupt_archive(archive, err) from None

    return read


def read_files(container: Path, names: Iterable[str]) -> dict[str, bytes]:
    """The bytes of ``names`` (``folder/file`` paths) from a folder or a tar archive.

    Archives are read in one pass that stops once every name was found. A missing name raises
    :class:`UserError` naming it.
    """
    wanted = list(names)
    if not is_archive(container):
        return {name: _read_plain(container / name) for name in wanted}
    found: dict[str, bytes] = {}
    for name, read in stream_archive(container):
        if name in wanted and name not in found:
            found[name] = read()
            if len(found) == len(wanted):
                break
    missing = [n for n in wanted if n not in found]
    if missing:
        raise UserError(f"{container} lacks {missing[0]}; it is not the official archive, download it again")
    return found


def _read_plain(path: Path) -> bytes:
    if not path.is_file():
        raise UserError(f"{path} is missing: the dataset folder is incomplete; extract the official archive again")
    return path.read_bytes()


def text_lines(data: bytes, source: str) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file (CIFAR's label-name files)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{source} is not a text file; download the dataset again") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
