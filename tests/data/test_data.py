"""Tests for robustlab.data: dataset formats (tiny fixtures written here), caching, the device loader."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustlab.data import (
    DeviceLoader,
    ImageDataset,
    batch_crop,
    batch_flip,
    cifar,
    download,
    fixed_subset,
    formats,
    load_dataset,
)
from robustlab.errors import UserError

CIFAR_JPEG = Path(__file__).resolve().parents[3] / "shared/data/cifar10-jpeg.tar.gz"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# --------------------------------------------------------------------------- helpers


def _records(labels: list[tuple[int, ...]], seed: int) -> tuple[bytes, np.ndarray]:
    """CIFAR binary records (label bytes + 3072 pixel bytes) and the pixels as (N, 3, 32, 32)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    rows = [bytes(lab) + img.tobytes() for lab, img in zip(labels, pixels)]
    return b"".join(rows), pixels


def _write_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Five 2-record train batches and a 3-record test batch; returns train/test images and labels."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        labels = [(2 * i - 2) % 10, (2 * i - 1) % 10]
        data, pixels = _records([(y,) for y in labels], seed=i)
        (folder / f"data_batch_{i}.bin").write_bytes(data)
        train_x.append(pixels)
        train_y += labels
    data, test_x = _records([(9,), (0,), (4,)], seed=10)
    (folder / "test_batch.bin").write_bytes(data)
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")
    return np.concatenate(train_x), np.array(train_y), test_x, np.array([9, 0, 4])


def _tar(folder: Path, archive: Path, arcname: str | None = None) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=arcname or folder.name)
    return archive


def _png_tree(root: Path, sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """root/{train,test}/{cat,dog}/NN.png, 4x6 RGB images whose red channel encodes (split, class, index)."""
    sizes = sizes or {}
    for s, split in enumerate(("train", "test")):
        for c, cls in enumerate(("dog", "cat")):  # written unsorted on purpose
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                w, h = sizes.get(f"{split}/{cls}/{i:02d}.png", (6, 4))
                arr = np.zeros((h, w, 3), dtype=np.uint8)
                arr[..., 0] = 100 * s + 10 * c + i
                Image.fromarray(arr).save(folder / f"{i:02d}.png")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return root


def _toy(n: int = 10, size: int = 4, classes: int = 3) -> ImageDataset:
    """Image i is filled with value i + 1 (never zero), label i % classes."""
    images = (torch.arange(n, dtype=torch.uint8) + 1).view(n, 1, 1, 1).expand(n, 1, size, size).contiguous()
    return ImageDataset(images, torch.arange(n) % classes, [str(k) for k in range(classes)], "toy")


# --------------------------------------------------------------------------- ImageDataset and registry


def test_image_dataset_validates_and_reports_shape() -> None:
    ds = _toy()
    assert ds.num_classes == 3 and ds.image_shape == (1, 4, 4) and len(ds) == 10
    with pytest.raises(UserError, match="uint8"):
        ImageDataset(ds.images.float(), ds.labels, ds.classes, "bad")
    with pytest.raises(UserError, match="int64"):
        ImageDataset(ds.images, ds.labels.int(), ds.classes, "bad")
    with pytest.raises(UserError, match="10 images but 9 labels"):
        ImageDataset(ds.images, ds.labels[:9], ds.classes, "bad")
    with pytest.raises(UserError, match="classes"):
        ImageDataset(ds.images, ds.labels, ["0", "1"], "bad")


def test_load_dataset_rejects_bad_names_splits_and_options() -> None:
    with pytest.raises(UserError, match="did you mean cifar10"):
        load_dataset("cifar1O", "train")
    with pytest.raises(UserError, match="no split 'valid'.*train, test"):
        load_dataset("digits", "valid")
    with pytest.raises(UserError, match="no option 'max_per_class'"):
        load_dataset("digits", "train", max_per_class=3)


def test_fixed_subset_is_seeded_and_sorted() -> None:
    ds = _toy(20)
    a, b, c = fixed_subset(ds, 5, seed=1), fixed_subset(ds, 5, seed=1), fixed_subset(ds, 5, seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    values = a.images[:, 0, 0, 0]
    assert len(a) == 5 and torch.all(values[1:] > values[:-1])
    assert torch.equal(a.labels, (values.long() - 1) % 3)
    with pytest.raises(UserError, match="subset of 21"):
        fixed_subset(ds, 21)


# --------------------------------------------------------------------------- digits


def test_digits_real_split() -> None:
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.classes == [str(k) for k in range(10)] and train.name == "digits"
    assert int(train.images.max()) == 255
    assert set(train.images.unique().tolist()) <= {round(v * 255 / 16) for v in range(17)}
    total = np.bincount(load_digits().target, minlength=10)
    test_counts = torch.bincount(test.labels, minlength=10).numpy()
    assert np.array_equal(torch.bincount(train.labels, minlength=10).numpy() + test_counts, total)
    assert np.all(np.abs(test_counts - total * 360 / 1797) <= 1)  # stratified
    again = load_dataset("digits", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("form", ["folder", "archive", "folder-as-root", "archive-as-root"])
def test_cifar10_binary(tmp_path: Path, form: str) -> None:
    train_x, train_y, test_x, test_y = _write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-bin"
    root: Path = tmp_path
    if "archive" in form:
        root = _tar(folder, tmp_path / "cifar-10-binary.tar.gz")
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
        root = root if form == "archive-as-root" else tmp_path
    elif form == "folder-as-root":
        root = folder
    train, test = load_dataset("cifar10", "train", root=root), load_dataset("cifar10", "test", root=root)
    assert train.images.shape == (10, 3, 32, 32) and train.classes == CIFAR10_NAMES
    assert np.array_equal(train.images.numpy(), train_x) and np.array_equal(train.labels.numpy(), train_y)
    assert np.array_equal(test.images.numpy(), test_x) and np.array_equal(test.labels.numpy(), test_y)


def test_cifar100_binary_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "src" / "cifar-100-binary"
    folder.mkdir(parents=True)
    data, pixels = _records([(3, 97), (19, 5)], seed=0)
    (folder / "train.bin").write_bytes(data)
    (folder / "test.bin").write_bytes(_records([(0, 42)], seed=1)[0])
    (folder / "fine_label_names.txt").write_text("\n".join(f"c{k}" for k in range(100)))
    _tar(folder, tmp_path / "cifar-100-binary.tar.gz")
    train = load_dataset("cifar100", "train", root=tmp_path)
    assert train.labels.tolist() == [97, 5] and train.num_classes == 100 and train.classes[97] == "c97"
    assert np.array_equal(train.images.numpy(), pixels)
    assert load_dataset("cifar100", "test", root=tmp_path).labels.tolist() == [42]


def test_cifar10_python_release_through_restricted_unpickler(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        batches.append(data)
        blob = {"batch_label": name, "labels": [i % 10, (i + 1) % 10], "data": data, "filenames": ["a", "b"]}
        (folder / name).write_bytes(pickle.dumps(blob, protocol=2 if i % 2 else 4))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR10_NAMES, "num_vis": 3072}))
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert np.array_equal(test.images.numpy(), batches[5].reshape(2, 3, 32, 32)) and test.labels.tolist() == [5, 6]
    assert load_dataset("cifar10", "train", root=tmp_path).images.shape == (10, 3, 32, 32)


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.mkdir, ("/tmp/robustlab-should-not-exist",))


def test_restricted_unpickler_refuses_other_globals(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="refusing global posix.mkdir"):
        cifar.restricted_unpickle(pickle.dumps({"data": _Evil()}), "evil")
    assert not Path("/tmp/robustlab-should-not-exist").exists()


def test_missing_dataset_points_to_download(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cifar10 not found under .*cifar-10-binary.tar.gz.*download=true"):
        load_dataset("cifar10", "train", root=tmp_path)
    with pytest.raises(UserError, match=r"svhn not found under .*test_32x32.mat.*download"):
        load_dataset("svhn", "test", root=tmp_path / "nowhere")


def test_corrupt_cifar_files_name_the_file(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-bin"
    archive = _tar(folder, tmp_path / "copy.tar.gz")
    bad = folder / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-7])
    with pytest.raises(UserError, match="data_batch_3.bin is truncated"):
        load_dataset("cifar10", "train", root=tmp_path)
    (folder / "test_batch.bin").unlink()
    with pytest.raises(UserError, match="test_batch.bin is missing"):
        load_dataset("cifar10", "test", root=tmp_path)
    truncated = tmp_path / "cut" / "cifar-10-binary.tar.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError, match="cifar-10-binary.tar.gz is corrupt or truncated"):
        load_dataset("cifar10", "test", root=truncated.parent)


def test_download_checks_md5_and_leaves_nothing_on_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_cifar10(tmp_path / "src")
    served = _tar(tmp_path / "src" / "cifar-10-batches-bin", tmp_path / "served.tar.gz")
    urls: list[str] = []

    def fake_open(url: str) -> io.BufferedReader:
        urls.append(url)
        return open(served, "rb")

    monkeypatch.setattr(download, "_open_url", fake_open)
    root = tmp_path / "root"
    with pytest.raises(UserError, match="md5 mismatch"):
        load_dataset("cifar10", "test", root=root, download=True)
    assert urls == ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"] and list(root.iterdir()) == []
    good = dataclasses.replace(cifar._CIFAR10, md5=download.md5sum(served))
    monkeypatch.setattr(cifar, "_CIFAR10", good)
    assert len(load_dataset("cifar10", "test", root=root, download=True)) == 3
    assert [p.name for p in root.iterdir()] == ["cifar-10-binary.tar.gz"]
    assert len(load_dataset("cifar10", "test", root=root)) == 3 and len(urls) == 2  # no second download


def test_download_file_from_file_url(tmp_path: Path) -> None:
    src = tmp_path / "blob.bin"
    src.write_bytes(b"robustlab" * 100)
    dest = download.download_file(src.as_uri(), tmp_path / "out" / "blob.bin", download.md5sum(src))
    assert dest.read_bytes() == src.read_bytes()
    with pytest.raises(UserError, match="could not download"):
        download.download_file((tmp_path / "absent").as_uri(), tmp_path / "out" / "x.bin", "0" * 32)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["blob.bin"]


# --------------------------------------------------------------------------- SVHN


def test_svhn_mat_transposes_and_maps_ten_to_zero(tmp_path: Path) -> None:
    import scipy.io

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    scipy.io.savemat(tmp_path / "extra_32x32.mat", {"X": x, "y": np.array([[10], [1], [9], [10]], dtype=np.uint8)})
    ds = load_dataset("svhn", "extra", root=tmp_path)
    assert ds.images.shape == (4, 3, 32, 32) and ds.labels.tolist() == [0, 1, 9, 0]
    assert int(ds.images[2, 1, 5, 7]) == int(x[5, 7, 1, 2])
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 garbage" * 10)
    with pytest.raises(UserError, match="test_32x32.mat is corrupt"):
        load_dataset("svhn", "test", root=tmp_path)
    with pytest.raises(UserError, match="no split 'val'"):
        load_dataset("svhn", "val", root=tmp_path)


# --------------------------------------------------------------------------- image folders


@pytest.mark.skipif(not CIFAR_JPEG.is_file(), reason="shared CIFAR-10 JPEG archive absent")
def test_imagefolder_cifar_jpeg_archive_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_dataset("imagefolder", "train", root=CIFAR_JPEG, max_per_class=3, cache_dir=tmp_path)
    assert ds.images.shape == (30, 3, 32, 32) and ds.classes == CIFAR10_NAMES
    assert ds.labels.tolist() == [k for k in range(10) for _ in range(3)]
    assert 0 < ds.images.float().mean() < 255 and len(list(tmp_path.glob("*.npy"))) == 2

    def no_archive(*args: object) -> None:
        raise AssertionError("the archive was reopened")

    monkeypatch.setattr(formats, "stream_archive", no_archive)
    again = load_dataset("imagefolder", "train", root=CIFAR_JPEG, max_per_class=3, cache_dir=tmp_path)
    assert torch.equal(again.images, ds.images) and again.classes == ds.classes


def test_imagefolder_directory(tmp_path: Path) -> None:
    root = _png_tree(tmp_path / "tree")
    ds = load_dataset("imagefolder", "test", root=root, cache=False)
    assert ds.classes == ["cat", "dog"] and ds.images.shape == (6, 3, 4, 6)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.images[:, 0, 0, 0].tolist() == [110, 111, 112, 100, 101, 102]  # sorted classes, sorted files
    gray = load_dataset("imagefolder", "train", root=root, channels=1, max_per_class=2, size=(8, 8), cache=False)
    assert gray.images.shape == (4, 1, 8, 8)
    with pytest.raises(UserError, match="no 'val' folder"):
        load_dataset("imagefolder", "val", root=root, cache=False)


def test_imagefolder_archive_with_top_folder_matches_directory(tmp_path: Path) -> None:
    root = _png_tree(tmp_path / "tree")
    archive = _tar(root, tmp_path / "tree.tar.gz", arcname="mydata")
    from_dir = load_dataset("imagefolder", "train", root=root, cache=False)
    from_tar = load_dataset("imagefolder", "train", root=archive, cache=False)
    assert torch.equal(from_dir.images, from_tar.images) and from_tar.classes == ["cat", "dog"]
    assert torch.equal(from_dir.labels, from_tar.labels)


def test_imagefolder_odd_size_and_bad_image(tmp_path: Path) -> None:
    root = _png_tree(tmp_path / "tree", sizes={"train/dog/01.png": (5, 4)})
    with pytest.raises(UserError, match=r"dog/01.png is 5x4 .* set data.options=\{size: \[H, W\]\}"):
        load_dataset("imagefolder", "train", root=root, cache=False)
    assert load_dataset("imagefolder", "train", root=root, size=4, cache=False).image_shape == (3, 4, 4)
    (root / "test" / "cat" / "00.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match="cannot decode image .*cat/00.png"):
        load_dataset("imagefolder", "test", root=root, cache=False)


def test_imagefolder_cache_invalidated_by_changed_file(tmp_path: Path) -> None:
    root = _png_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    first = load_dataset("imagefolder", "test", root=root, cache_dir=cache)
    assert int(first.images[0, 0, 0, 0]) == 110
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy", ".npy"]
    target = root / "test" / "cat" / "00.png"
    Image.fromarray(np.full((4, 6, 3), 7, dtype=np.uint8)).save(target)
    os.utime(target, ns=(1, 1))
    second = load_dataset("imagefolder", "test", root=root, cache_dir=cache)
    assert int(second.images[0, 0, 0, 0]) == 7 and len(list(cache.iterdir())) == 3


# --------------------------------------------------------------------------- npz


def test_npz_layouts_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    path = tmp_path / "set.npz"
    y_test = np.array([[1], [0]])
    np.savez(path, x_train=nhwc, y_train=np.arange(5), x_test=nhwc[:2], y_test=y_test, classes=np.array(list("abcde")))
    train = load_dataset("npz", "train", root=path)
    assert train.images.shape == (5, 3, 6, 6) and np.array_equal(train.images.numpy(), nhwc.transpose(0, 3, 1, 2))
    assert train.classes == list("abcde") and load_dataset("npz", "test", root=path).labels.tolist() == [1, 0]
    floats = tmp_path / "floats.npz"
    np.savez(floats, images=np.full((2, 1, 3, 5), 0.5, dtype=np.float32), labels=np.array([0.0, 2.0]))
    ds = load_dataset("npz", "test", root=floats)
    assert ds.images.shape == (2, 1, 3, 5) and int(ds.images.max()) == 128 and ds.num_classes == 3
    np.savez(tmp_path / "ambiguous.npz", x=np.zeros((2, 3, 3, 3), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(UserError, match="layout='nhwc'"):
        load_dataset("npz", "train", root=tmp_path / "ambiguous.npz")
    assert load_dataset("npz", "train", root=tmp_path / "ambiguous.npz", layout="nchw").image_shape == (3, 3, 3)
    np.savez(tmp_path / "range.npz", x=np.full((2, 4, 4), 3.0), y=np.zeros(2, np.int64))
    with pytest.raises(UserError, match=r"\[0, 1\]; divide"):
        load_dataset("npz", "train", root=tmp_path / "range.npz")
    np.savez(tmp_path / "objects.npz", x=np.array([None, 1], dtype=object), y=np.zeros(2))
    with pytest.raises(UserError, match="not a readable .npz"):
        load_dataset("npz", "train", root=tmp_path / "objects.npz")
    with pytest.raises(UserError, match="no x_val"):
        load_dataset("npz", "val", root=path)


# --------------------------------------------------------------------------- loader


def _epoch(loader: DeviceLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def test_loader_batches_values_and_order() -> None:
    ds = _toy(10)
    loader = DeviceLoader(ds, 4, shuffle=False)
    batches = _epoch(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (4, 1, 4, 4)
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor([1.0, 2, 3, 4]) / 255)
    assert len(DeviceLoader(ds, 4, drop_last=True)) == 2
    shuffled = DeviceLoader(ds, 10, seed=3)
    first, second = _epoch(shuffled), _epoch(shuffled)
    assert sorted(first[0][1].tolist()) == sorted(ds.labels.tolist())
    assert not torch.equal(first[0][0], second[0][0])  # a new permutation each epoch
    assert _same(first, _epoch(DeviceLoader(ds, 10, seed=3)))
    assert not _same(first, _epoch(DeviceLoader(ds, 10, seed=4)))
    with pytest.raises(UserError, match="batch_size"):
        DeviceLoader(ds, 0)
    with pytest.raises(UserError, match="leaves no batch"):
        DeviceLoader(ds, 11, drop_last=True)


def test_loader_state_dict_resumes_between_and_within_epochs() -> None:
    ds = _toy(30)
    kw = dict(shuffle=True, crop_padding=1, flip=True)
    run = DeviceLoader(ds, 4, seed=7, **kw)
    _epoch(run)
    between = run.state_dict()
    assert between["generator"].dtype == torch.uint8 and int(between["batch"]) == 0
    it = iter(run)
    head = [next(it) for _ in range(3)]
    within = run.state_dict()
    tail = [(x.clone(), y.clone()) for x, y in it]
    following = _epoch(run)
    assert len(head) + len(tail) == len(run) and int(within["batch"]) == 3

    resumed = DeviceLoader(ds, 4, seed=0, **kw)
    resumed.load_state_dict(between)
    assert _same(_epoch(resumed)[3:], tail)
    resumed.load_state_dict(within)
    assert (torch.equal(resumed.state_dict()["generator"], within["generator"])
            and int(resumed.state_dict()["batch"]) == 3)
    assert _same(_epoch(resumed), tail)
    assert _same(_epoch(resumed), following)
    with pytest.raises(UserError, match="generator"):
        resumed.load_state_dict({"generator": torch.zeros(3)})


def test_batch_flip_reverses_width() -> None:
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.uint8).view(2, 1, 2, 3)
    out = batch_flip(x, torch.tensor([True, False]))
    assert out[0, 0].tolist() == [[2, 1, 0], [5, 4, 3]] and torch.equal(out[1], x[1])


def test_batch_crop_shifts_content_and_fills_zeros() -> None:
    x = (torch.arange(16, dtype=torch.uint8) + 1).view(1, 1, 4, 4).repeat(3, 1, 1, 1)
    shifts = torch.tensor([[0, 2, 4], [2, 3, 0]])  # rows, cols into the 2-padded image
    out = batch_crop(x, shifts, padding=2)
    assert torch.equal(out[0, 0, :2], torch.zeros(2, 4, dtype=torch.uint8))  # moved down by 2
    assert torch.equal(out[0, 0, 2:], x[0, 0, :2])
    assert torch.equal(out[1, 0, :, :3], x[1, 0, :, 1:]) and out[1, 0, :, 3].sum() == 0  # left by 1
    assert torch.equal(out[2, 0, :2, 2:], x[2, 0, 2:, :2]) and out[2, 0, 2:].sum() == 0


def test_loader_augmentation_is_a_valid_flip_and_crop_and_keeps_labels() -> None:
    pattern = (torch.arange(25, dtype=torch.uint8) + 1).view(1, 1, 5, 5)
    images = pattern.repeat(40, 1, 1, 1) + 30 * (torch.arange(40) % 4).to(torch.uint8).view(40, 1, 1, 1)
    ds = ImageDataset(images, torch.arange(40) % 4, ["a", "b", "c", "d"], "pattern")
    p = 2
    seen: set[tuple[bool, int, int]] = set()
    for x, y in DeviceLoader(ds, 16, crop_padding=p, flip=True, seed=1):
        for img, label in zip((x * 255).round().to(torch.uint8), y):
            original = pattern[0] + 30 * int(label)
            match = _find_transform(img, original, p)
            assert match is not None, "output is not a flip+shift of its labelled image"
            seen.add(match)
    assert len(seen) > 10 and {m[0] for m in seen} == {False, True}


def _find_transform(img: torch.Tensor, original: torch.Tensor, p: int) -> tuple[bool, int, int] | None:
    """(flipped, row shift, col shift) with img == crop(flip?(original)), or None."""
    for flipped in (False, True):
        src = original.flip(-1) if flipped else original
        for sy in range(2 * p + 1):
            for sx in range(2 * p + 1):
                if torch.equal(batch_crop(src[None], torch.tensor([[sy], [sx]]), p)[0], img):
                    return flipped, sy, sx
    return None
