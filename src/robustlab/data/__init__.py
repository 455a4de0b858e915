"""Datasets as uint8 tensors and the on-device loader.

``load_dataset(name, split, root=None, download=False, **options)`` returns an :class:`ImageDataset`
(uint8 images (N, C, H, W), int64 labels, class names); :class:`DeviceLoader` keeps it on the device
and yields augmented float batches in [0, 1].
"""

from robustlab.data import cifar, digits, imagefolder, npz, svhn, tinyimagenet  # noqa: F401  (each registers its data sets)
from robustlab.data.loader import DeviceLoader, batch_crop, batch_flip
from robustlab.data.record import (
    DATASETS,
    ImageDataset,
    evaluation_subset,
    fixed_subset,
    hold_out,
    holdout_indices,
    load_dataset,
    subset_indices,
)

__all__ = [
    "DATASETS",
    "DeviceLoader",
    "ImageDataset",
    "batch_crop",
    "batch_flip",
    "evaluation_subset",
    "fixed_subset",
    "hold_out",
    "holdout_indices",
    "load_dataset",
    "subset_indices",
]
