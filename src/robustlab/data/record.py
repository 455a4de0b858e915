"""The dataset record: :class:`ImageDataset` (uint8 images, int64 labels, class names), the ``DATASETS``
registry with its entry point :func:`load_dataset`, seeded subsets (:func:`fixed_subset`) and the stratified
validation images held out of a training split (:func:`hold_out`).

The data sets register themselves in their own modules (:mod:`~robustlab.data.digits`,
:mod:`~robustlab.data.cifar`, :mod:`~robustlab.data.svhn`, :mod:`~robustlab.data.npz`,
:mod:`~robustlab.data.imagefolder`, :mod:`~robustlab.data.tinyimagenet`), all imported by
:mod:`robustlab.data`. Every factory takes ``(split, *, root=None, download=False, **options)`` and
returns an :class:`ImageDataset`; bad input raises :class:`~robustlab.errors.UserError`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

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


def make_dataset(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], name: str) -> ImageDataset:
    """Wrap numpy arrays (copied only if read-only or strided) into an :class:`ImageDataset`."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if not images.flags.writeable:
        images = images.copy()
    if not labels.flags.writeable:
        labels = labels.copy()
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), list(classes), name)


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


def holdout_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` sorted indices of ``labels`` stratified by class, fixed by ``seed``: the validation images held out.

    Class ``c`` of ``count_c`` images gives ``floor(n · count_c / N)`` of them, and the ``n`` minus their sum
    left over go one each to the classes with the largest remainders (ties: the lower class index), so every
    class's share is its share of the split to within one image; within a class the images are a seeded random
    draw (a CPU ``torch.Generator``, one ``randperm`` per class in class order). Integer arithmetic throughout:
    the same labels and seed give the same indices on every machine.

    Rice et al. 2020 ("Overfitting in adversarially robust deep learning", ICML; ``generate_validation.py`` of
    locuslab/robust_overfitting, read by its ``train_cifar.py --val``) hold out 1,000 CIFAR-10 (and CIFAR-100)
    training images, one uniform permutation under numpy seed 0. Deviations [ours]: the draw is per class, so the
    validation set keeps the training split's class balance, and its seed is the caller's (the run's ``seed``).
    """
    total = len(labels)
    if not 0 < n < total:
        raise UserError(f"cannot hold out {n} of {total} training images for validation; choose 1 <= "
                        f"data.val_examples < {total} (e.g. 1000 for CIFAR)")
    counts = torch.bincount(labels)
    quota, remainder = (counts * n).div(total, rounding_mode="floor"), (counts * n) % total
    extra = torch.argsort(-remainder, stable=True)[: n - int(quota.sum())]
    quota[extra] += 1
    generator = torch.Generator().manual_seed(int(seed))
    picked = []
    for label, take in enumerate(quota.tolist()):
        members = (labels == label).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(picked).sort().values


def hold_out(dataset: ImageDataset, n: int, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """``(rest, held)``: ``dataset`` without the ``n`` images of :func:`holdout_indices`, and those images (both in
    dataset order). The two are disjoint and together are the whole of ``dataset``."""
    held = holdout_indices(dataset.labels, n, seed)
    keep = torch.ones(len(dataset), dtype=torch.bool)
    keep[held] = False
    return dataset.select(keep.nonzero().flatten()), dataset.select(held)


def evaluation_subset(dataset: ImageDataset, n: int | None, seed: int) -> tuple[ImageDataset, torch.Tensor]:
    """The samples an evaluation takes, with their indices in ``dataset``: all of it (``n`` None) or its
    :func:`fixed_subset` of ``n``. The indices equal :func:`subset_indices` ``(len(dataset), n or len, seed)``."""
    if n is None:
        return dataset, torch.arange(len(dataset))
    indices = subset_indices(len(dataset), n, seed)
    return dataset.select(indices), indices


def check_split(name: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise UserError(f"{name} has no split {split!r}; use one of: {', '.join(allowed)}")


def data_root(root: str | Path | None) -> Path:
    return Path(root if root is not None else DEFAULT_ROOT).expanduser()
