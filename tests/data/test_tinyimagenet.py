"""Tiny-ImageNet from a fake official release (3 wnids, a few 64×64 JPEGs): folder, .zip and tar."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustlab.data import download as download_module
from robustlab.data import load_dataset
from robustlab.errors import UserError

# wnids.txt order is not sorted: labels must follow the sorted order.
WNIDS = ["n02", "n01", "n03"]
TRAIN_PER_CLASS = 2
# val file -> wnid, deliberately not grouped by class
VAL = {"val_0.JPEG": "n03", "val_1.JPEG": "n01", "val_2.JPEG": "n02", "val_3.JPEG": "n01"}
SORTED = sorted(WNIDS)


def _jpeg(value: int) -> bytes:
    """A flat 64×64 RGB JPEG of grey level ``value`` (JPEG keeps flat colours within a few levels)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (value, value, value)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _colour(wnid: str, k: int) -> int:
    return 40 * SORTED.index(wnid) + 10 * k + 20


def release_files() -> dict[str, bytes]:
    """Relative path under tiny-imagenet-200/ -> bytes; the grey level encodes class and index."""
    files = {"wnids.txt": "\n".join(WNIDS).encode() + b"\n", "words.txt": b"n01\tthing\n"}
    for wnid in WNIDS:
        files[f"train/{wnid}/{wnid}_boxes.txt"] = b""
        for k in range(TRAIN_PER_CLASS):
            files[f"train/{wnid}/images/{wnid}_{k}.JPEG"] = _jpeg(_colour(wnid, k))
    lines = []
    for i, (name, wnid) in enumerate(VAL.items()):
        files[f"val/images/{name}"] = _jpeg(_colour(wnid, 3))
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    files["val/val_annotations.txt"] = ("\n".join(lines) + "\n").encode()
    files["test/images/test_0.JPEG"] = _jpeg(250)
    return files


def make_folder(root: Path) -> Path:
    top = root / "tiny-imagenet-200"
    for rel, data in release_files().items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(data)
    return top


def make_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in release_files().items():
            zf.writestr(f"tiny-imagenet-200/{rel}", data)
    return path


def make_tar(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for rel, data in release_files().items():
            info = tarfile.TarInfo(f"tiny-imagenet-200/{rel}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _check(root: Path, cache_dir: Path) -> None:
    train = load_dataset("tinyimagenet", "train", root=root, cache_dir=cache_dir)
    assert train.classes == SORTED and train.images.shape == (6, 3, 64, 64)
    grey = train.images.float().mean(dim=(1, 2, 3)).numpy()
    expected = [(_colour(w, k), SORTED.index(w)) for w in SORTED for k in range(TRAIN_PER_CLASS)]
    order = np.argsort(grey)
    assert np.allclose(grey[order], [c for c, _ in sorted(expected)], atol=3)
    assert train.labels[order].tolist() == [lab for _, lab in sorted(expected)]
    for split in ("val", "test"):  # test = the labelled val split
        val = load_dataset("tinyimagenet", split, root=root, cache_dir=cache_dir)
        assert val.labels.tolist() == [SORTED.index(VAL[f"val_{i}.JPEG"]) for i in range(4)]
        assert np.allclose(val.images.float().mean(dim=(1, 2, 3)).numpy(),
                           [_colour(VAL[f"val_{i}.JPEG"], 3) for i in range(4)], atol=3)


def test_folder_release_has_sorted_wnid_labels(tmp_path: Path) -> None:
    top = make_folder(tmp_path / "data")
    _check(top, tmp_path / "cache")
    _check(tmp_path / "data", tmp_path / "cache2")  # a folder holding tiny-imagenet-200/


@pytest.mark.parametrize("maker,name", [(make_zip, "tiny-imagenet-200.zip"), (make_tar, "tiny.tar.gz")])
def test_archive_release(maker, name: str, tmp_path: Path) -> None:
    archive = maker(tmp_path / name)
    _check(archive, tmp_path / "cache")
    if name.endswith(".zip"):  # the official file name in a data root is found too
        _check(tmp_path, tmp_path / "cache2")


def test_cache_is_reused_and_keeps_apart_from_imagefolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_zip(tmp_path / "tiny-imagenet-200.zip")
    first = load_dataset("tinyimagenet", "train", root=archive, cache_dir=tmp_path / "c", max_per_class=1)
    assert first.labels.tolist() == [0, 1, 2]
    from robustlab.data import tinyimagenet

    monkeypatch.setattr(tinyimagenet, "scan", lambda *a: pytest.fail("decoded again"))
    again = load_dataset("tinyimagenet", "train", root=archive, cache_dir=tmp_path / "c", max_per_class=1)
    assert (again.images == first.images).all()
    assert len(list((tmp_path / "c").glob("*.json"))) == 1


def test_missing_release_and_bad_annotations_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data.download=true"):
        load_dataset("tinyimagenet", "train", root=tmp_path)
    top = make_folder(tmp_path / "d")
    (top / "val/val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="wnid"):
        load_dataset("tinyimagenet", "val", root=top, cache=False)


def test_download_only_on_request_and_checksummed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_zip(tmp_path / "src.zip")
    calls = []

    def fake_open(url: str):
        calls.append(url)
        return open(archive, "rb")

    monkeypatch.setattr(download_module, "_open_url", fake_open)
    with pytest.raises(UserError, match="md5 mismatch"):  # a fake release never has the official MD5
        load_dataset("tinyimagenet", "train", root=tmp_path / "root", download=True)
    assert calls == ["http://cs231n.stanford.edu/tiny-imagenet-200.zip"]
    assert not (tmp_path / "root" / "tiny-imagenet-200.zip").exists()
    from robustlab.data import tinyimagenet

    monkeypatch.setattr(tinyimagenet, "MD5", download_module.md5sum(archive))
    ds = load_dataset("tinyimagenet", "train", root=tmp_path / "root", download=True, cache=False)
    assert ds.classes == SORTED and len(calls) == 2
