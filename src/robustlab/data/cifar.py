"""CIFAR-10 and CIFAR-100: the releases' layouts and their parsers (binary records; python pickles through an
unpickler that can rebuild nothing but numpy arrays), read from folders or archives, downloaded only on request."""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robustlab.data import formats
from robustlab.data.download import ensure_file, not_found
from robustlab.data.record import DATASETS, ImageDataset, check_split, data_root, make_dataset
from robustlab.errors import UserError

CIFAR_IMAGE_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class _Layout:
    """Where one release keeps its files: top folder, train files, test files, class-name file."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str


@dataclass(frozen=True)
class _Cifar:
    name: str
    num_classes: int
    archive: str
    url: str
    md5: str
    binary: _Layout
    label_bytes: int
    py_archive: str
    python: _Layout
    py_labels: str
    py_names: str


_CIFAR10 = _Cifar(
    name="cifar10",
    num_classes=10,
    archive="cifar-10-binary.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    md5="c32a1d4ab5d03f1284b67883e8d87530",
    binary=_Layout(
        "cifar-10-batches-bin",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        ("test_batch.bin",),
        "batches.meta.txt",
    ),
    label_bytes=1,
    py_archive="cifar-10-python.tar.gz",
    python=_Layout(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta"
    ),
    py_labels="labels",
    py_names="label_names",
)
_CIFAR100 = _Cifar(
    name="cifar100",
    num_classes=100,
    archive="cifar-100-binary.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    md5="03b5dce01913d631647c71ecec9e9cb8",
    binary=_Layout("cifar-100-binary", ("train.bin",), ("test.bin",), "fine_label_names.txt"),
    label_bytes=2,
    py_archive="cifar-100-python.tar.gz",
    python=_Layout("cifar-100-python", ("train",), ("test",), "meta"),
    py_labels="fine_labels",
    py_names="fine_label_names",
)


@DATASETS.register
def cifar10(split: str, *, root: str | Path | None = None, download: bool = False) -> ImageDataset:
    """CIFAR-10 (Krizhevsky 2009), 50,000 train / 10,000 test 32×32 RGB images, 10 classes.

    Reads, in this order, under ``root``: the extracted ``cifar-10-batches-bin/`` folder, the
    ``cifar-10-binary.tar.gz`` archive (read directly, not extracted), the python release
    (``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``, via a numpy-only unpickler). ``root``
    may also be the folder or archive itself. ``download=True`` fetches the binary archive from
    https://www.cs.toronto.edu/~kriz/cifar.html and checks its MD5.
    """
    return _load_cifar(_CIFAR10, split, root, download)


@DATASETS.register
def cifar100(split: str, *, root: str | Path | None = None, download: bool = False) -> ImageDataset:
    """CIFAR-100 with its 100 fine labels (coarse labels are ignored); same sources as :func:`cifar10`.

    Binary release: ``cifar-100-binary/`` or ``cifar-100-binary.tar.gz``; python release:
    ``cifar-100-python/`` or ``cifar-100-python.tar.gz``.
    """
    return _load_cifar(_CIFAR100, split, root, download)


def _load_cifar(spec: _Cifar, split: str, root: str | Path | None, download: bool) -> ImageDataset:
    check_split(spec.name, split, ("train", "test"))
    container, python = _find_cifar(spec, data_root(root), download)
    layout = spec.python if python else spec.binary
    members = [f"{layout.folder}/{f}" for f in (layout.train if split == "train" else layout.test)]
    meta = f"{layout.folder}/{layout.meta}"
    blobs = formats.read_files(container, [*members, meta])
    where = {m: _where(container, m) for m in [*members, meta]}
    if python:
        names = cifar_pickle_names(blobs[meta], spec.py_names, where[meta])
        parts = [cifar_pickle_batch(blobs[m], spec.py_labels, where[m]) for m in members]
    else:
        names = formats.text_lines(blobs[meta], where[meta])
        parts = [cifar_binary(blobs[m], spec.label_bytes, where[m]) for m in members]
    del blobs
    if len(names) != spec.num_classes:
        raise UserError(f"{where[meta]} lists {len(names)} classes, not {spec.num_classes}; download {spec.name} again")
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts])
    return make_dataset(images, labels, names, spec.name)


def _where(container: Path, member: str) -> str:
    """How messages name a file: ``archive:member`` or the plain path."""
    return f"{container}:{member}" if formats.is_archive(container) else str(container / member)


def _find_cifar(spec: _Cifar, root: Path, download: bool) -> tuple[Path, bool]:
    """``(container, is_python_release)``: a folder holding the release's top folder, or an archive."""
    if root.is_file():
        if not formats.is_archive(root):
            raise UserError(f"{spec.name} root {root} is a file but not a .tar.gz; point root at the folder holding it")
        return root, root.name == spec.py_archive
    if root.name in (spec.binary.folder, spec.python.folder) and root.is_dir():
        return root.parent, root.name == spec.python.folder
    candidates = [
        (root / spec.binary.folder, root, False),
        (root / spec.archive, root / spec.archive, False),
        (root / spec.python.folder, root, True),
        (root / spec.py_archive, root / spec.py_archive, True),
    ]
    for probe, container, python in candidates:
        if probe.exists():
            return container, python
    if not download:
        raise not_found(spec.name, root, spec.archive)
    return ensure_file(spec.name, root, spec.archive, spec.url, spec.md5, download=True), False


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
