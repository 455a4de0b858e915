"""Fetching official dataset files: only on request, checksum-verified, written atomically.

Nothing here runs unless the caller passed ``download=True``. A file is streamed into a temporary
file beside its destination, its MD5 is compared with the published checksum, and only then is it
renamed into place (:func:`robustlab.atomic.atomic_write`), so an interrupted or corrupted download never leaves a
file that a later run would mistake for a good copy.
"""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path
from typing import IO, BinaryIO

from robustlab.atomic import atomic_write
from robustlab.errors import UserError

_CHUNK = 1 << 20


def md5sum(path: str | Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open_url(url: str) -> BinaryIO:
    """Open ``url`` for reading (the one network call; tests replace it)."""
    return urllib.request.urlopen(url, timeout=60)  # noqa: S310 - fixed official URLs


def download_file(url: str, dest: str | Path, md5: str) -> Path:
    """Download ``url`` to ``dest`` if its MD5 equals ``md5``; return ``dest``.

    The bytes go to a temporary file in ``dest``'s folder and are renamed into place only after
    the checksum matches. A mismatch or a network error raises :class:`UserError` and leaves no file.
    """
    dest = Path(dest)

    def fetch(out: IO[bytes]) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with _open_url(url) as src:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as err:  # urllib.error.URLError is an OSError
            raise UserError(
                f"could not download {url} ({err}); check the network or place {dest.name} "
                f"under {dest.parent} by hand"
            ) from None
        got = digest.hexdigest()
        if got != md5:
            raise UserError(
                f"md5 mismatch for {url}: got {got}, expected {md5}; retry the download or place "
                f"a good copy of {dest.name} under {dest.parent} by hand"
            )

    try:
        atomic_write(dest, fetch)
    except OSError as err:  # the folder cannot be created or written (network errors are UserErrors by now)
        raise UserError(f"cannot write into {dest.parent} ({err}); set data.root to a writable folder") from None
    return dest


def ensure_file(dataset: str, root: Path, filename: str, url: str, md5: str, download: bool) -> Path:
    """``root / filename``, downloading it first when absent and ``download`` is true."""
    path = root / filename
    if path.is_file():
        return path
    if not download:
        raise not_found(dataset, root, filename)
    return download_file(url, path, md5)


def not_found(dataset: str, root: Path, filename: str) -> UserError:
    """The standard 'dataset missing' error, naming the file to place and the download switch."""
    return UserError(
        f"{dataset} not found under {root}: place {filename} there or set data.download=true "
        f"(robustlab eval --model: --download; Python: download=True)"
    )
