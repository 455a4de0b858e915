"""scikit-learn's bundled 8×8 handwritten digits (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustlab.data.record import DATASETS, ImageDataset, check_split, make_dataset


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

    check_split("digits", split, ("train", "test"))
    bunch = load_digits()
    index = np.arange(len(bunch.target))
    train, test = train_test_split(index, test_size=360, stratify=bunch.target, random_state=0)
    chosen = np.sort(train if split == "train" else test)
    images = np.rint(bunch.data[chosen] * 255.0 / 16.0).astype(np.uint8).reshape(-1, 1, 8, 8)
    return make_dataset(images, bunch.target[chosen], [str(k) for k in range(10)], "digits")
