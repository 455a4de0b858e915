"""SVHN cropped digits: the official MATLAB files, downloaded only on request."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustlab.data.download import ensure_file
from robustlab.data.record import DATASETS, ImageDataset, check_split, data_root, make_dataset
from robustlab.errors import UserError

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
    check_split("svhn", split, tuple(_SVHN_FILES))
    folder = data_root(root)
    if folder.is_file():
        raise UserError(f"svhn root {folder} is a file; set root to the folder holding {split}_32x32.mat")
    filename, md5 = _SVHN_FILES[split]
    path = ensure_file("svhn", folder, filename, _SVHN_URL + filename, md5, download)
    images, labels = svhn_mat(path)
    return make_dataset(images, labels, [str(k) for k in range(10)], "svhn")


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
