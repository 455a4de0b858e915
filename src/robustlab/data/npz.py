"""Arrays in a ``.npz`` file (one per split or one for all), as a data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustlab.data.record import DATASETS, ImageDataset, check_split, make_dataset
from robustlab.errors import UserError

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
    check_split("npz", split, ("train", "val", "test"))
    if root is None:
        raise UserError("npz needs root: set data.root to a .npz file or a folder with train.npz/test.npz")
    if download:
        raise UserError("npz cannot be downloaded; set data.download=false and point data.root at your file")
    folder = Path(root).expanduser()
    path = folder / f"{split}.npz" if folder.is_dir() else folder
    if not path.is_file():
        raise UserError(f"npz file {path} not found; set data.root to an existing .npz")
    arrays = load_npz(path)
    x, y = _npz_pair(arrays, split, path)
    images = to_uint8_nchw(x, layout, str(path))
    labels = to_labels(y, len(images), str(path))
    if "classes" not in arrays and num_classes is None:
        num_classes = _npz_label_count(arrays, sorted(folder.glob("*.npz")) if folder.is_dir() else [])
    return make_dataset(images, labels, _npz_classes(arrays, labels, num_classes, path), "npz")


def _npz_label_count(arrays: dict[str, np.ndarray], siblings: list[Path]) -> int:
    """Max label + 1 over every label array of the file and of its sibling split files (at least 1)."""
    label_sets = [v for k, v in arrays.items() if k.split("_")[0] in ("y", "labels")]
    for other in siblings:
        label_sets += [v for k, v in load_npz(other).items() if k.split("_")[0] in ("y", "labels")]
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
        raise UserError(f"{path}: labels imply {count} classes; store labels 0..K-1 "
                        f"(at most {MAX_NPZ_CLASSES} classes)")
    return [str(k) for k in range(count)]


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
