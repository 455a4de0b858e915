"""Datasets as uint8 tensors: the :class:`ImageDataset` record, the ``DATASETS`` registry and loaders.

Registered names (the config's ``data.name``): ``digits`` (scikit-learn's bundled 8×8 digits, no
download), ``cifar10``, ``cifar100``, ``svhn`` (official releases, read locally or downloaded with
MD5 checks), ``tinyimagenet`` (the official release layout, folder, .zip or tar), ``imagefolder`` (``root/split/class/*.png|jpg``, folder or tar archive) and ``npz``.
Every factory takes ``(split, *, root=None, download=False, **options)`` and returns an
:class:`ImageDataset`; bad input raises :class:`~robustlab.errors.UserError`.

The CIFAR python-pickle releases are read, but only through an unpickler that
can rebuild nothing but numpy arrays (see :func:`robustlab.data.formats.restricted_unpickle`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from robustlab.data import formats
from robustlab.data.download import ensure_file, not_found
from robustlab.data.imagefolder import DEFAULT_CACHE_DIR, FolderOptions, load_imagefolder
from robustlab.data.tinyimagenet import load_tinyimagenet
from robustlab.errors import UserError
from robustlab.registry import Registry

DATASETS: Registry[Callable[..., "ImageDataset"]] = Registry("dataset")
DEFAULT_ROOT = Path("~/.cache/robustlab/data")


@dataclass
class ImageDataset:
    """A whole split in memory: uint8 images (N, C, H, W), int64 labels (N,), class names, a name."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        self.classes = list(self.classes)
        _check_images(self.images, self.name)
        _check_labels(self.labels, len(self.images), self.name)
        _check_classes(self.classes, self.labels, self.name)

    @property
    def num_classes(self) -> int:
        """Number of classes K (labels lie in 0..K-1)."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def select(self, indices: torch.Tensor | Sequence[int]) -> ImageDataset:
        """A new dataset holding the images at ``indices`` (in that order)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, self.name)


def _check_images(images: Any, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise UserError(
            f"dataset {name!r}: images must be a uint8 tensor (N, C, H, W), got {got}; "
            f"convert with (x * 255).round().to(torch.uint8) and permute to NCHW"
        )
    if min(images.shape[1:]) < 1:
        shape = tuple(images.shape)
        raise UserError(f"dataset {name!r}: images have an empty dimension {shape}; check the source files")


def _check_labels(labels: Any, count: int, name: str) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise UserError(
            f"dataset {name!r}: labels must be an int64 tensor (N,), got {got}; convert with y.long().reshape(-1)"
        )
    if len(labels) != count:
        raise UserError(f"dataset {name!r}: {count} images but {len(labels)} labels; give one label per image")


def _check_classes(classes: list[str], labels: torch.Tensor, name: str) -> None:
    if not classes or not all(isinstance(c, str) for c in classes):
        raise UserError(f"dataset {name!r}: classes must be a non-empty list of names; pass e.g. ['0', '1', ...]")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
        raise UserError(
            f"dataset {name!r}: labels span {int(labels.min())}..{int(labels.max())} but there are "
            f"{len(classes)} classes; fix the labels or the class list"
        )


def _dataset(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], name: str) -> ImageDataset:
    """Wrap numpy arrays (copied only if read-only or strided) into an :class:`ImageDataset`."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if not images.flags.writeable:
        images = images.copy()
    if not labels.flags.writeable:
        labels = labels.copy()
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), list(classes), name)


# --------------------------------------------------------------------------- entry points


def load_dataset(
    name: str, split: str, *, root: str | Path | None = None, download: bool = False, **kwargs: Any
) -> ImageDataset:
    """Load split ``split`` of dataset ``name`` through the ``DATASETS`` registry.

    ``root`` is where the files live (default ``~/.cache/robustlab/data``; for ``imagefolder`` and
    ``npz`` the folder, archive or file itself). ``download=True`` fetches official files that are
    missing. Options that are None are dropped (the factory's default applies), as in
    :meth:`Registry.create`; unknown options raise :class:`UserError`.
    """
    factory = DATASETS.get(name)
    options = {k: v for k, v in kwargs.items() if v is not None}
    accepted = [p for p in inspect.signature(factory).parameters if p not in ("split", "root", "download")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) or "none"
        raise UserError(f"dataset {name!r} takes no option {unknown[0]!r}; its options: {allowed}")
    return factory(split, root=root, download=download, **options)


def subset_indices(total: int, n: int, seed: int) -> torch.Tensor:
    """``n`` distinct sorted indices out of ``total``, fixed by ``seed`` (a CPU ``torch.Generator``)."""
    if not 0 < n <= total:
        raise UserError(f"cannot take a subset of {n} from {total} samples; choose 1 <= n <= {total}")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(total, generator=generator)[:n].sort().values


def fixed_subset(dataset: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """A deterministic random subset of ``n`` samples (kept in dataset order), e.g. for held-out evaluation."""
    return dataset.select(subset_indices(len(dataset), n, seed))


def _check_split(name: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise UserError(f"{name} has no split {split!r}; use one of: {', '.join(allowed)}")


def _root(root: str | Path | None) -> Path:
    return Path(root if root is not None else DEFAULT_ROOT).expanduser()


# --------------------------------------------------------------------------- digits


@DATASETS.register
def digits(split: str, *, root: str | Path | None = None, download: bool = False) -> ImageDataset:
    """scikit-learn's 1,797 handwritten 8×8 digits (bundled, no download; ``root`` is ignored).

    Pixel values 0..16 become round(v * 255 / 16) as uint8, shape (N, 1, 8, 8). Split: stratified,
    ``train_test_split(test_size=360, random_state=0)``, giving 1,437 train / 360 test; indices are
    sorted so each split keeps the original order. Source: UCI "Optical Recognition of Handwritten
    Digits", via ``sklearn.datasets.load_digits``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_split("digits", split, ("train", "test"))
    bunch = load_digits()
    index = np.arange(len(bunch.target))
    train, test = train_test_split(index, test_size=360, stratify=bunch.target, random_state=0)
    chosen = np.sort(train if split == "train" else test)
    images = np.rint(bunch.data[chosen] * 255.0 / 16.0).astype(np.uint8).reshape(-1, 1, 8, 8)
    return _dataset(images, bunch.target[chosen], [str(k) for k in range(10)], "digits")


# --------------------------------------------------------------------------- CIFAR


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
    _check_split(spec.name, split, ("train", "test"))
    container, python = _find_cifar(spec, _root(root), download)
    layout = spec.python if python else spec.binary
    members = [f"{layout.folder}/{f}" for f in (layout.train if split == "train" else layout.test)]
    meta = f"{layout.folder}/{layout.meta}"
    blobs = formats.read_files(container, [*members, meta])
    where = {m: _where(container, m) for m in [*members, meta]}
    if python:
        names = formats.cifar_pickle_names(blobs[meta], spec.py_names, where[meta])
        parts = [formats.cifar_pickle_batch(blobs[m], spec.py_labels, where[m]) for m in members]
    else:
        names = formats.text_lines(blobs[meta], where[meta])
        parts = [formats.cifar_binary(blobs[m], spec.label_bytes, where[m]) for m in members]
    del blobs
    if len(names) != spec.num_classes:
        raise UserError(f"{where[meta]} lists {len(names)} classes, not {spec.num_classes}; download {spec.name} again")
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts])
    return _dataset(images, labels, names, spec.name)


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


# --------------------------------------------------------------------------- SVHN

_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
_SVHN_FILES = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
}


@DATASETS.register
def svhn(split: str, *, root: str | Path | None = None, download: bool = False) -> ImageDataset:
    """SVHN cropped digits (Netzer et al. 2011): 73,257 train / 26,032 test / 531,131 extra, 32×32 RGB.

    Reads ``root/{split}_32x32.mat`` (MATLAB v5, via ``scipy.io.loadmat``); label 10 means digit 0.
    ``download=True`` fetches the file from http://ufldl.stanford.edu/housenumbers/ and checks its MD5.
    """
    _check_split("svhn", split, tuple(_SVHN_FILES))
    folder = _root(root)
    if folder.is_file():
        raise UserError(f"svhn root {folder} is a file; set root to the folder holding {split}_32x32.mat")
    filename, md5 = _SVHN_FILES[split]
    path = ensure_file("svhn", folder, filename, _SVHN_URL + filename, md5, download)
    images, labels = formats.svhn_mat(path)
    return _dataset(images, labels, [str(k) for k in range(10)], "svhn")


# --------------------------------------------------------------------------- custom data


@DATASETS.register
def imagefolder(
    split: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    channels: int = 3,
    size: int | Sequence[int] | None = None,
    max_per_class: int | None = None,
    cache_dir: str | Path | None = None,
    cache: bool = True,
) -> ImageDataset:
    """Images in ``root/split/class/*.png|jpg|jpeg``; ``root`` a folder or a ``.tar``/``.tar.gz``.

    Classes are the sorted union of the class folders found under ``train``/``val``/``test`` (so all
    splits share one label map). Archive members may sit under a leading top folder. Images become
    RGB (``channels=3``) or grayscale (``channels=1``) and must share one size unless ``size``
    (``H`` or ``(H, W)``, bilinear) is given. ``max_per_class`` keeps the first files by name per
    class. Decoded arrays are cached in ``cache_dir`` (default ``~/.cache/robustlab``) unless
    ``cache=False``. ``download`` is not supported (there is no official copy to fetch).
    """
    _check_split("imagefolder", split, ("train", "val", "test"))
    if root is None:
        raise UserError("imagefolder needs root: set data.root to a folder or .tar.gz with SPLIT/CLASS/*.png|jpg")
    if download:
        raise UserError("imagefolder cannot be downloaded; set data.download=false and point data.root at your copy")
    if channels not in (1, 3):
        raise UserError(f"imagefolder channels={channels!r} is not supported; use channels=3 (RGB) or 1 (grayscale)")
    options = FolderOptions(split, channels, _size(size), _cap(max_per_class))
    images, labels, classes = load_imagefolder(Path(root).expanduser(), options, _cache_dir(cache_dir, cache))
    return _dataset(images, labels, classes, "imagefolder")


@DATASETS.register
def tinyimagenet(
    split: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    max_per_class: int | None = None,
    cache_dir: str | Path | None = None,
    cache: bool = True,
) -> ImageDataset:
    """Tiny-ImageNet-200: 100,000 train / 10,000 val 64×64 RGB images, 200 classes (sorted wnids).

    ``root``: the extracted ``tiny-imagenet-200/`` folder, a folder holding it or
    ``tiny-imagenet-200.zip``, or the .zip/tar archive itself. ``test`` reads the labelled ``val``
    split. ``download=True`` fetches the .zip from http://cs231n.stanford.edu/ and checks its MD5.
    ``max_per_class``, ``cache_dir`` and ``cache`` as for :func:`imagefolder`. Layout and choices:
    :mod:`robustlab.data.tinyimagenet`.
    """
    _check_split("tinyimagenet", split, ("train", "val", "test"))
    images, labels, classes = load_tinyimagenet(
        _root(root), split, download=download, max_per_class=_cap(max_per_class), cache_dir=_cache_dir(cache_dir, cache)
    )
    return _dataset(images, labels, classes, "tinyimagenet")


def _cache_dir(cache_dir: str | Path | None, cache: bool) -> Path | None:
    return Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser() if cache else None


def _size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise UserError(f"imagefolder size={size!r} is invalid; use a positive int or [H, W]")
    return (int(pair[0]), int(pair[1]))


def _cap(max_per_class: int | None) -> int | None:
    if max_per_class is not None and (not isinstance(max_per_class, int) or max_per_class < 1):
        raise UserError(f"max_per_class={max_per_class!r} is invalid; use a positive int or leave it unset")
    return max_per_class


MAX_NPZ_CLASSES = 100_000  # more is a label column of ids, not classes


@DATASETS.register
def npz(
    split: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    layout: str | None = None,
    num_classes: int | None = None,
) -> ImageDataset:
    """Arrays from a ``.npz`` (loaded with ``allow_pickle=False``).

    ``root`` is the ``.npz`` file, or a folder holding ``{split}.npz``. Keys: ``x_{split}`` /
    ``images_{split}`` with ``y_{split}`` / ``labels_{split}``; a file without split-prefixed keys
    uses ``x``/``images`` and ``y``/``labels`` for whichever split is asked. Images: (N, H, W),
    NHWC or NCHW (guessed from a 1- or 3-channel axis; ``layout='nhwc'|'nchw'`` decides otherwise),
    uint8, integers 0..255 or floats in [0, 1] (scaled by 255 and rounded). Class names come from a
    ``classes`` string array, else ``num_classes``, else max label + 1 over every split (the file's
    label arrays, and the sibling ``{split}.npz`` files of a folder), so train and test agree.
    """
    _check_split("npz", split, ("train", "val", "test"))
    if root is None:
        raise UserError("npz needs root: set data.root to a .npz file or a folder with train.npz/test.npz")
    if download:
        raise UserError("npz cannot be downloaded; set data.download=false and point data.root at your file")
    folder = Path(root).expanduser()
    path = folder / f"{split}.npz" if folder.is_dir() else folder
    if not path.is_file():
        raise UserError(f"npz file {path} not found; set data.root to an existing .npz")
    arrays = formats.load_npz(path)
    x, y = _npz_pair(arrays, split, path)
    images = formats.to_uint8_nchw(x, layout, str(path))
    labels = formats.to_labels(y, len(images), str(path))
    if "classes" not in arrays and num_classes is None:
        num_classes = _npz_label_count(arrays, sorted(folder.glob("*.npz")) if folder.is_dir() else [])
    return _dataset(images, labels, _npz_classes(arrays, labels, num_classes, path), "npz")


def _npz_label_count(arrays: dict[str, np.ndarray], siblings: list[Path]) -> int:
    """Max label + 1 over every label array of the file and of its sibling split files (at least 1)."""
    label_sets = [v for k, v in arrays.items() if k.split("_")[0] in ("y", "labels")]
    for other in siblings:
        label_sets += [v for k, v in formats.load_npz(other).items() if k.split("_")[0] in ("y", "labels")]
    highest = [int(np.max(v)) for v in label_sets if v.size and v.dtype.kind in "iuf" and np.isfinite(v).all()]
    return max(highest, default=0) + 1


def _npz_pair(arrays: dict[str, np.ndarray], split: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    prefixed = any(k.startswith(("x_", "images_", "y_", "labels_")) for k in arrays)
    suffix = f"_{split}" if prefixed else ""
    x = next((arrays[k + suffix] for k in ("x", "images") if k + suffix in arrays), None)
    y = next((arrays[k + suffix] for k in ("y", "labels") if k + suffix in arrays), None)
    if x is None or y is None:
        raise UserError(
            f"{path} has no x{suffix}/images{suffix} and y{suffix}/labels{suffix} arrays (keys: "
            f"{', '.join(sorted(arrays))}); save them under those names"
        )
    return x, y


def _npz_classes(arrays: dict[str, np.ndarray], labels: np.ndarray, num_classes: int | None, path: Path) -> list[str]:
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise UserError(f"{path}: 'classes' must be a 1-D string array; save np.array(['cat', 'dog'])")
        return [str(n.decode() if isinstance(n, bytes) else n) for n in names]
    count = num_classes if num_classes is not None else int(labels.max()) + 1 if labels.size else 1
    if count > MAX_NPZ_CLASSES:
        raise UserError(f"{path}: labels imply {count} classes; store labels 0..K-1 (at most {MAX_NPZ_CLASSES} classes)")
    return [str(k) for k in range(count)]
