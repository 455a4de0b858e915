"""Tiny-ImageNet-200 from its official release layout, as a folder, the .zip or a tar archive.

Layout (Stanford CS231n, http://cs231n.stanford.edu/tiny-imagenet-200.zip)::

    tiny-imagenet-200/wnids.txt                      200 WordNet ids, one a line
    tiny-imagenet-200/train/<wnid>/images/*.JPEG     500 per class
    tiny-imagenet-200/val/images/*.JPEG              10,000
    tiny-imagenet-200/val/val_annotations.txt        file <TAB> wnid <TAB> box (4 ints)

Images are 64×64 (a few are grayscale; all are decoded to RGB). Labels: the index of the wnid in
the *sorted* wnids (the class order of an image-folder reader on ``train/``, which the papers'
code uses), not the order of ``wnids.txt``. Splits: ``train`` and ``val``; ``test`` is read as
``val`` [ours], because the release's test images carry no labels and the papers report the
validation set as their test set. Decoding and its cache are :mod:`robustlab.data.imagefolder`'s.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from robustlab.data import formats
from robustlab.data.download import ensure_file
from robustlab.data.imagefolder import (
    FolderOptions,
    Item,
    cache_fingerprint,
    cache_folder,
    listing_digest,
    load_decoded,
    per_class_cap,
    stat_digest,
)
from robustlab.data.record import DATASETS, ImageDataset, check_split, data_root, make_dataset
from robustlab.errors import UserError

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE = "tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TOP = "tiny-imagenet-200"
WNIDS = "wnids.txt"
ANNOTATIONS = "val/val_annotations.txt"
SIZE = (64, 64)

Reader = Callable[[], bytes]


def locate(root: Path, download: bool) -> Path:
    """The release under ``root``: the folder holding ``wnids.txt``, or the .zip/tar archive."""
    if root.is_file():
        return root
    for candidate in (root, root / TOP):
        if (candidate / WNIDS).is_file():
            return candidate
    if (root / ARCHIVE).is_file() or download:
        return ensure_file("tinyimagenet", root, ARCHIVE, URL, MD5, download)
    raise UserError(
        f"tinyimagenet not found under {root}: place {ARCHIVE} or its extracted {TOP}/ folder there, "
        f"or set data.download=true (robustlab eval --model: --download)"
    )


def _members(source: Path) -> Iterator[tuple[str, Reader]]:
    """(relative name, read) of every file; archive members are read at once (valid after the loop)."""
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            yield path.relative_to(source).as_posix(), path.read_bytes
    elif zipfile.is_zipfile(source):
        try:
            with zipfile.ZipFile(source) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        data = zf.read(info)
                        yield formats.member_name(info.filename), lambda data=data: data
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise formats.corrupt_archive(source, err) from None
    elif formats.is_archive(source):
        for name, read in formats.stream_archive(source):
            data = read()
            yield name, lambda data=data: data
    else:
        raise UserError(f"tinyimagenet root {source} is neither the release folder nor a .zip/.tar archive")


def scan(source: Path, split: str, max_per_class: int | None) -> tuple[list[str], list[Item]]:
    """Sorted wnids and the split's images, labelled by their wnid's index; one pass over ``source``."""
    texts: dict[str, bytes] = {}
    images: dict[str, tuple[str, Reader]] = {}  # key: path below the top folder
    prefix: str | None = None
    for name, read in _members(source):
        if name.endswith(WNIDS) and name.count("/") <= 1:
            prefix = name[: -len(WNIDS)]
            texts[WNIDS] = read()
        elif name.endswith(ANNOTATIONS):
            texts[ANNOTATIONS] = read()
        elif f"{split}/" in name and name.lower().endswith(".jpeg") and "/images/" in name:
            images[name] = (str(source / name) if source.is_dir() else f"{source}:{name}", read)
    if prefix is None or WNIDS not in texts:
        raise UserError(f"{source} has no {WNIDS}; it is not the Tiny-ImageNet release, download it again")
    wnids = sorted(formats.text_lines(texts[WNIDS], f"{source}:{prefix}{WNIDS}"))
    index = {w: i for i, w in enumerate(wnids)}
    labelled = (_train_labels(images, prefix, index) if split == "train"
                else _val_labels(images, prefix, index, texts, source))
    kept: dict[int, int] = {}
    items = []
    order = sorted(labelled) if split == "train" else sorted(labelled, key=lambda pair: pair[1])
    for label, key in order:  # train by class then file name, val by file name
        if max_per_class is None or kept.get(label, 0) < max_per_class:
            kept[label] = kept.get(label, 0) + 1
            items.append(Item(label, *images[key]))
    if not items:
        raise UserError(f"{source} holds no {split} images under {prefix}{split}/; check the release is complete")
    return wnids, items


def _train_labels(images: dict[str, tuple[str, Reader]], prefix: str, index: dict[str, int]) -> list[tuple[int, str]]:
    """``prefix/train/<wnid>/images/<file>`` -> (label, key); a wnid missing from wnids.txt is an error."""
    out = []
    for key in images:
        parts = key[len(prefix):].split("/")
        if len(parts) != 4 or parts[0] != "train" or parts[2] != "images":
            continue
        if parts[1] not in index:
            raise UserError(f"train folder {parts[1]} is not listed in {WNIDS}; the release is inconsistent")
        out.append((index[parts[1]], key))
    return out


def _val_labels(images: dict[str, tuple[str, Reader]], prefix: str, index: dict[str, int],
                texts: dict[str, bytes], source: Path) -> list[tuple[int, str]]:
    """``prefix/val/images/<file>`` labelled by ``val_annotations.txt`` (file, wnid, box)."""
    if ANNOTATIONS not in texts:
        raise UserError(f"{source} has no {ANNOTATIONS}; the validation labels are missing, download the release again")
    wnid_of = {}
    for line in formats.text_lines(texts[ANNOTATIONS], f"{source}:{prefix}{ANNOTATIONS}"):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise UserError(f"{ANNOTATIONS} line {line[:60]!r} does not name a listed wnid; the release is "
                            "inconsistent")
        wnid_of[fields[0]] = fields[1]
    out = []
    for key in images:
        parts = key[len(prefix):].split("/")
        if len(parts) != 3 or parts[:2] != ["val", "images"]:
            continue
        if parts[2] not in wnid_of:
            raise UserError(f"validation image {parts[2]} has no line in {ANNOTATIONS}; the release is inconsistent")
        out.append((index[wnid_of[parts[2]]], key))
    return out


def load_tinyimagenet(
    root: Path, split: str, *, download: bool, max_per_class: int | None, cache_dir: Path | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images uint8 (N, 3, 64, 64), labels, sorted wnids)`` of ``split`` (``test`` = ``val``)."""
    split = "val" if split == "test" else split
    source = locate(root, download)
    options = FolderOptions(split, 3, SIZE, max_per_class)
    if source.is_dir():
        classes, items = scan(source, split, max_per_class)
        extra = [stat_digest(source / p) for p in (WNIDS, ANNOTATIONS) if (source / p).is_file()]
        fingerprint = cache_fingerprint(source, options, f"{listing_digest(classes, items)}|{'|'.join(extra)}",
                                        "tinyimagenet")
        return load_decoded(fingerprint, options, cache_dir, lambda: (classes, items))
    fingerprint = cache_fingerprint(source, options, stat_digest(source), "tinyimagenet")
    return load_decoded(fingerprint, options, cache_dir, lambda: scan(source, split, max_per_class))


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
    check_split("tinyimagenet", split, ("train", "val", "test"))
    images, labels, classes = load_tinyimagenet(
        data_root(root), split, download=download, max_per_class=per_class_cap(max_per_class),
        cache_dir=cache_folder(cache_dir, cache)
    )
    return make_dataset(images, labels, classes, "tinyimagenet")
