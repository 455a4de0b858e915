"""Image-folder datasets (``root/split/class/*.png|jpg|jpeg``) from a folder or a tar archive.

Decoding thousands of small files is slow, so the decoded arrays are cached as ``.npy`` files plus a
JSON side file holding the class list and a fingerprint of the source (path, size, modification time,
options). A later load with the same fingerprint reads the arrays back with ``allow_pickle=False``;
any change rebuilds them. Cache writes are atomic (:func:`robustlab.atomic.atomic_write`), JSON last.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from robustlab.atomic import atomic_write
from robustlab.data import formats
from robustlab.data.record import DATASETS, ImageDataset, check_split, make_dataset
from robustlab.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_FOLDERS = ("train", "val", "test")
CACHE_VERSION = 1
DEFAULT_CACHE_DIR = Path("~/.cache/robustlab")


@dataclass(frozen=True)
class FolderOptions:
    """What to decode: split folder, channel count, optional (H, W) resize, per-class cap."""

    split: str
    channels: int = 3
    size: tuple[int, int] | None = None
    max_per_class: int | None = None


@dataclass
class Item:
    """One image to decode: its label, a name for messages, and how to get its bytes."""

    label: int
    name: str
    read: Callable[[], bytes]


def load_imagefolder(
    root: Path, options: FolderOptions, cache_dir: Path | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decoded ``(images uint8 NCHW, labels int64, classes)``, through the cache when ``cache_dir`` is set."""
    listing: tuple[list[str], list[Item]] | None = None
    if formats.is_archive(root):
        fingerprint = cache_fingerprint(root, options, stat_digest(root))
    elif root.is_dir():
        listing = scan_directory(root, options)  # cheap, and the fingerprint needs it
        fingerprint = cache_fingerprint(root, options, listing_digest(*listing))
    else:
        raise UserError(f"imagefolder root {root} is neither a folder nor a .tar/.tar.gz archive; point root at one")
    return load_decoded(
        fingerprint, options, cache_dir, lambda: listing if listing is not None else scan_archive(root, options)
    )


def load_decoded(
    fingerprint: dict[str, Any], options: FolderOptions, cache_dir: Path | None,
    scan: Callable[[], tuple[list[str], list[Item]]],
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The cached arrays for ``fingerprint``, else ``scan()``'s items decoded (and cached)."""
    cached = read_cache(cache_dir, fingerprint) if cache_dir is not None else None
    if cached is not None:
        return cached
    classes, items = scan()
    images = decode_all(items, options)
    labels = np.array([it.label for it in items], dtype=np.int64)
    if cache_dir is not None:
        write_cache(cache_dir, fingerprint, images, labels, classes)
    return images, labels, classes


# --------------------------------------------------------------------------- scanning


def _is_image(parts: list[str]) -> bool:
    """Whether a path (as its parts) is a visible .png/.jpg/.jpeg file (no hidden or __MACOSX parts)."""
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)
    return not hidden and parts[-1].lower().endswith(IMAGE_SUFFIXES)


def scan_directory(root: Path, options: FolderOptions) -> tuple[list[str], list[Item]]:
    """Classes (union of class folders over the split folders) and the images of ``options.split``."""
    split_dir = root / options.split
    if not split_dir.is_dir():
        raise UserError(f"no {options.split!r} folder under {root}: expected ROOT/{options.split}/CLASS/*.png|jpg")
    splits = {s for s in (*SPLIT_FOLDERS, options.split) if (root / s).is_dir()}
    folders = (d for s in splits for d in (root / s).iterdir() if d.is_dir())
    classes = sorted({d.name for d in folders if not d.name.startswith(".")})
    items: list[Item] = []
    for label, cls in enumerate(classes):
        folder = split_dir / cls
        names = sorted(p.name for p in folder.iterdir() if _is_image([p.name])) if folder.is_dir() else []
        for name in names[: options.max_per_class]:
            path = folder / name
            items.append(Item(label, str(path), path.read_bytes))
    return classes, items


def scan_archive(archive: Path, options: FolderOptions) -> tuple[list[str], list[Item]]:
    """Like :func:`scan_directory` for a tar archive, in one pass; a leading top folder is allowed.

    Member paths are read as ``[prefix/]split/class/file``; with ``max_per_class`` only the first
    files by name are kept in memory.
    """
    kept: dict[tuple[tuple[str, ...], str], list[tuple[str, bytes]]] = {}
    class_names: dict[tuple[str, ...], set[str]] = {}
    for name, read in formats.stream_archive(archive):
        parts = name.split("/")
        if len(parts) < 3 or not _is_image(parts):
            continue
        prefix, split, cls, file = tuple(parts[:-3]), parts[-3], parts[-2], parts[-1]
        if split in SPLIT_FOLDERS or split == options.split:
            class_names.setdefault(prefix, set()).add(cls)
        if split == options.split:
            _keep(kept.setdefault((prefix, cls), []), file, read, options.max_per_class)
    prefixes = sorted({prefix for prefix, _ in kept})
    if not prefixes:
        raise UserError(f"{archive} holds no {options.split}/CLASS/*.png|jpg images; check the split name and layout")
    if len(prefixes) > 1:
        shown = ", ".join("/".join(p) or "." for p in prefixes[:3])
        raise UserError(f"{archive} has {options.split!r} folders under several tops ({shown}); keep one tree")
    classes = sorted(class_names[prefixes[0]])
    top = "/".join((*prefixes[0], options.split))
    items = [
        Item(label, f"{archive}:{top}/{cls}/{file}", lambda data=data: data)
        for label, cls in enumerate(classes)
        for file, data in kept.get((prefixes[0], cls), [])
    ]
    return classes, items


def _keep(entries: list[tuple[str, bytes]], file: str, read: Callable[[], bytes], cap: int | None) -> None:
    """Insert ``(file, bytes)`` in name order, keeping only the first ``cap`` names (read only those)."""
    if cap is not None and len(entries) >= cap and file >= entries[-1][0]:
        return
    bisect.insort(entries, (file, read()), key=lambda e: e[0])
    if cap is not None and len(entries) > cap:
        entries.pop()


# --------------------------------------------------------------------------- decoding


def decode_all(items: list[Item], options: FolderOptions) -> np.ndarray:
    """Decode every item to one uint8 (N, C, H, W) array; sizes must agree unless ``size`` is set."""
    arrays = [decode(it.read(), it.name, options) for it in items]
    if not arrays:
        raise UserError(f"no images found for split {options.split!r}; add class folders with .png/.jpg files")
    first = arrays[0].shape
    for it, arr in zip(items, arrays):
        if arr.shape != first:
            raise UserError(
                f"image {it.name} is {arr.shape[1]}x{arr.shape[0]} but {items[0].name} is "
                f"{first[1]}x{first[0]}; resize the images to one size, or set data.options={{size: [H, W]}} in the "
                "config"
            )
    stacked = np.stack(arrays)
    return np.ascontiguousarray(stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2))


def decode(data: bytes, name: str, options: FolderOptions) -> np.ndarray:
    """One image as (H, W, 3) RGB or (H, W) grayscale uint8, resized bilinearly if ``size`` is set."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("L" if options.channels == 1 else "RGB")
            if options.size is not None and img.size != (options.size[1], options.size[0]):
                img = img.resize((options.size[1], options.size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot decode image {name} ({err}); delete or replace the file") from None


# --------------------------------------------------------------------------- cache


def cache_fingerprint(root: Path, options: FolderOptions, content: str, layout: str = "imagefolder") -> dict[str, Any]:
    """What identifies a decoded cache entry; ``layout`` keeps other readers of the same root apart."""
    ident = {"version": CACHE_VERSION, "source": str(root.resolve()), "content": content, **asdict(options)}
    return ident if layout == "imagefolder" else {**ident, "layout": layout}


def stat_digest(path: Path) -> str:
    st = path.stat()
    return f"size={st.st_size},mtime_ns={st.st_mtime_ns}"


def listing_digest(classes: list[str], items: list[Item]) -> str:
    """SHA-256 over the class list and each chosen file's path, size and modification time."""
    digest = hashlib.sha256(json.dumps(classes).encode())
    for it in items:
        st = os.stat(it.name)
        digest.update(f"{it.label}|{it.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cache_paths(cache_dir: Path, fingerprint: dict[str, Any]) -> tuple[Path, Path, Path]:
    """Side-file, images and labels paths; the key covers source and options but not content."""
    ident = {k: v for k, v in fingerprint.items() if k != "content"}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
    base = cache_dir / f"imagefolder-{key}"
    return base.with_suffix(".json"), Path(f"{base}.images.npy"), Path(f"{base}.labels.npy")


def read_cache(cache_dir: Path, fingerprint: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """Cached arrays if the side file's fingerprint matches and the arrays are consistent, else None."""
    meta_path, images_path, labels_path = _cache_paths(cache_dir, fingerprint)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != json.loads(json.dumps(fingerprint)):
            return None
        images = np.load(images_path, allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    classes = meta.get("classes")
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (len(images),) or not isinstance(classes, list):
        return None
    return images, labels.astype(np.int64, copy=False), classes


def write_cache(
    cache_dir: Path, fingerprint: dict[str, Any], images: np.ndarray, labels: np.ndarray, classes: list[str]
) -> None:
    """Write arrays then the side file, each atomically; an unwritable cache only warns."""
    meta_path, images_path, labels_path = _cache_paths(cache_dir, fingerprint)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(images_path, lambda fh: np.save(fh, images, allow_pickle=False))
        atomic_write(labels_path, lambda fh: np.save(fh, labels, allow_pickle=False))
        meta = {"fingerprint": fingerprint, "classes": classes}
        atomic_write(meta_path, lambda fh: fh.write(json.dumps(meta, indent=1).encode()))
    except OSError as err:
        warnings.warn(f"could not write the imagefolder cache in {cache_dir} ({err}); loading will not be cached")


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
    check_split("imagefolder", split, ("train", "val", "test"))
    if root is None:
        raise UserError("imagefolder needs root: set data.root to a folder or .tar.gz with SPLIT/CLASS/*.png|jpg")
    if download:
        raise UserError("imagefolder cannot be downloaded; set data.download=false and point data.root at your copy")
    if channels not in (1, 3):
        raise UserError(f"imagefolder channels={channels!r} is not supported; use channels=3 (RGB) or 1 (grayscale)")
    options = FolderOptions(split, channels, image_size(size), per_class_cap(max_per_class))
    images, labels, classes = load_imagefolder(Path(root).expanduser(), options, cache_folder(cache_dir, cache))
    return make_dataset(images, labels, classes, "imagefolder")


def cache_folder(cache_dir: str | Path | None, cache: bool) -> Path | None:
    return Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser() if cache else None


def image_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise UserError(f"imagefolder size={size!r} is invalid; use a positive int or [H, W]")
    return (int(pair[0]), int(pair[1]))


def per_class_cap(max_per_class: int | None) -> int | None:
    if max_per_class is not None and (not isinstance(max_per_class, int) or max_per_class < 1):
        raise UserError(f"max_per_class={max_per_class!r} is invalid; use a positive int or leave it unset")
    return max_per_class
