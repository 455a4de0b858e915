"""Readers for on-disk dataset formats, returning numpy arrays (uint8 NCHW images, int64 labels).

Every reader turns a malformed file into a one-line :class:`UserError` naming the file, never a
traceback: the official CIFAR binary records, the CIFAR python pickles (through an unpickler that
can only rebuild numpy arrays), SVHN's MATLAB files, tar archives and ``.npz`` arrays.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from robustlab.errors import UserError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
CIFAR_IMAGE_BYTES = 3 * 32 * 32
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


# --------------------------------------------------------------------------- CIFAR


def cifar_binary(data: bytes, label_bytes: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse CIFAR binary records: ``label_bytes`` label bytes then 3,072 bytes of CHW pixels.

    The last label byte is used (CIFAR-10's only label, CIFAR-100's fine label).
    Source: https://www.cs.toronto.edu/~kriz/cifar.html ("Binary version").
    """
    record = label_bytes + CIFAR_IMAGE_BYTES
    if not data or len(data) % record:
        raise UserError(
            f"{source} is truncated or not a CIFAR binary file ({len(data)} bytes is not a multiple "
            f"of {record}); download the dataset again"
        )
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    labels = rows[:, label_bytes - 1].astype(np.int64)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy()
    return images, labels


def text_lines(data: bytes, source: str) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file (CIFAR's label-name files)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{source} is not a text file; download the dataset again") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may name: numpy array and dtype reconstruction."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    import _codecs

    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,  # protocol-2 pickles written by Python 3 use it for bytes
    }
    for prefix in ("numpy.core", "numpy._core"):
        table[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except numpy array/dtype reconstruction."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}") from None


def restricted_unpickle(data: bytes, source: str) -> Any:
    """Load a pickle that may hold only builtins and numpy arrays (no other code can run).

    Python 2 pickles (the official CIFAR python release) are read with ``encoding="latin1"``.
    """
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # noqa: BLE001 - any failure of untrusted bytes is a bad file
        raise UserError(
            f"{source} is not a plain CIFAR pickle ({type(err).__name__}: {err}); use the binary "
            f"release (cifar-*-binary.tar.gz) instead"
        ) from None


def cifar_pickle_batch(blob: bytes, labels_key: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from one CIFAR python batch file (``data`` N×3072 uint8 + labels)."""
    obj = restricted_unpickle(blob, source)
    data = obj.get("data") if isinstance(obj, dict) else None
    labels = obj.get(labels_key) if isinstance(obj, dict) else None
    ok = (
        isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
        and data.shape[1] == CIFAR_IMAGE_BYTES and labels is not None and len(labels) == len(data)
    )
    if not ok:
        raise UserError(f"{source} does not hold CIFAR 'data' and {labels_key!r} arrays; download the dataset again")
    return data.reshape(-1, 3, 32, 32).copy(), np.asarray(labels, dtype=np.int64)


def cifar_pickle_names(blob: bytes, key: str, source: str) -> list[str]:
    """Class names from a CIFAR python meta file."""
    obj = restricted_unpickle(blob, source)
    names = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{source} has no {key!r} list; download the dataset again")
    return names


# --------------------------------------------------------------------------- SVHN


def svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an official SVHN ``*_32x32.mat``: X (32, 32, 3, N) -> (N, 3, 32, 32); label 10 -> 0.

    Source: http://ufldl.stanford.edu/housenumbers/ (format 2, cropped digits).
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as err:  # noqa: BLE001 - scipy raises many types for bad files
        raise UserError(f"{path} is corrupt or not an SVHN .mat file ({err}); delete it and download again") from None
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[2] != 3 or y is None or y.size != x.shape[3]:
        raise UserError(f"{path} lacks SVHN arrays X (H, W, 3, N) and y (N, 1); download it again")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8, copy=False)
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{path} has labels outside 1..10; download it again")
    return images, labels


# --------------------------------------------------------------------------- arrays (.npz)


def to_uint8_nchw(x: np.ndarray, layout: str | None, source: str) -> np.ndarray:
    """Images as uint8 (N, C, H, W) from (N, H, W), NHWC or NCHW; uint8, ints 0..255 or floats in [0, 1]."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        x = x.transpose(0, 3, 1, 2) if _channels_last(x.shape, layout, source) else x
    else:
        raise UserError(f"{source}: images have shape {x.shape}; store them as (N, H, W, C) or (N, C, H, W)")
    return np.ascontiguousarray(_as_uint8(x, source))


def _channels_last(shape: tuple[int, ...], layout: str | None, source: str) -> bool:
    if layout is not None:
        if layout not in ("nhwc", "nchw"):
            raise UserError(f"unknown layout {layout!r}; use layout='nhwc' or layout='nchw'")
        return layout == "nhwc"
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first == last:
        raise UserError(f"{source}: cannot tell NHWC from NCHW for shape {shape}; pass layout='nhwc' or 'nchw'")
    return last


def _as_uint8(x: np.ndarray, source: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
            raise UserError(f"{source}: float images must lie in [0, 1]; divide 0..255 data by 255 or store uint8")
        return np.rint(x * 255.0).astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer) and not np.issubdtype(x.dtype, np.bool_):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise UserError(f"{source}: integer images must lie in 0..255; rescale them to uint8")
        return x.astype(np.uint8)
    raise UserError(f"{source}: images have dtype {x.dtype}; store uint8 or floats in [0, 1]")


def to_labels(y: np.ndarray, count: int, source: str) -> np.ndarray:
    """Labels as int64 (N,), from (N,) or (N, 1) integers (or integral floats), all >= 0."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != count:
        raise UserError(f"{source}: labels have shape {y.shape} for {count} images; store one integer label per image")
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise UserError(f"{source}: labels must be non-negative integers; map class names to 0..K-1")
    return y.astype(np.int64)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` loaded with ``allow_pickle=False`` (object arrays are refused)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as err:  # noqa: BLE001 - zipfile/numpy raise many types for bad files
        raise UserError(f"{path} is not a readable .npz of plain arrays ({err}); save it with np.savez") from None
