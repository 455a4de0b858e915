"""Issue 31, item 3: checkpoint selection on the record.

``data.val_examples`` holds stratified, seeded training images out of training for the per-epoch evaluation and the
``best`` checkpoint, and a run that uses it never loads the test split; every evaluation record of a checkpoint says
which checkpoint it is and how it was chosen, and one chosen on the test split is flagged ``selected_on_test`` in the
record and on the leaderboard.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from tiny_runs import tiny_config

import robustlab.train.loop as loop
from robustlab.cli import main
from robustlab.config import build_config
from robustlab.data import DATASETS, ImageDataset, hold_out, holdout_indices, load_dataset
from robustlab.errors import UserError
from robustlab.evaluate import evaluate_checkpoint
from robustlab.rules import config_warnings
from robustlab.runs.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from robustlab.study import Options, Study, load_study
from robustlab.study.plan import SETTINGS_FILE
from robustlab.train import Trainer, train

ROOT = Path(__file__).resolve().parents[2]
DIGITS_TRAIN = 1437  # scikit-learn's digits, robustlab's train split
VAL = 60


def _stamped(n: int, labels: torch.Tensor) -> ImageDataset:
    """``n`` blank 1×2×2 images whose first two pixels spell their own index (low byte, high byte)."""
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    index = torch.arange(n)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = (index % 256).to(torch.uint8), (index // 256).to(torch.uint8)
    return ImageDataset(images, labels, [str(k) for k in range(int(labels.max()) + 1)], "stamped")


def _indices(x: torch.Tensor) -> list[int]:
    """The indices stamped into a batch of images (uint8, or floats in [0, 1] as the loader yields them)."""
    pixels = x if x.dtype == torch.uint8 else (x * 255).round()
    return (pixels[:, 0, 0, 0].long() + 256 * pixels[:, 0, 0, 1].long()).tolist()


# ---------------------------------------------------------------------------------------------- the held-out images
def test_holdout_is_stratified_by_class_to_within_one_image() -> None:
    shuffle = torch.randperm(1000, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)[shuffle]
    held = holdout_indices(labels, 100, seed=0)
    assert torch.bincount(labels[held], minlength=3).tolist() == [90, 9, 1]  # exactly proportional
    digits = load_dataset("digits", "train").labels
    held = holdout_indices(digits, VAL, seed=0)
    share = torch.bincount(digits).double() * VAL / len(digits)
    counts = torch.bincount(digits[held], minlength=10).double()
    assert len(held) == VAL and (counts - share).abs().max() < 1  # each class its share, to within one image
    uneven = torch.tensor([0] * 5 + [1] * 4 + [2])  # 1.5, 1.2, 0.3 images due: the seat left goes to the largest .5
    assert torch.bincount(uneven[holdout_indices(uneven, 3, seed=0)], minlength=3).tolist() == [2, 1, 0]
    ties = holdout_indices(torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]), 2, seed=0)  # equal remainders: lower classes
    assert torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])[ties].tolist() == [0, 1]


def test_holdout_is_seeded_deterministic_and_disjoint_from_training() -> None:
    labels = load_dataset("digits", "train").labels
    data = _stamped(len(labels), labels)
    first = holdout_indices(labels, VAL, seed=3)
    assert torch.equal(first, holdout_indices(labels, VAL, seed=3))  # the same seed and data: the same images
    assert not torch.equal(first, holdout_indices(labels, VAL, seed=4))
    assert torch.equal(first, first.sort().values) and len(set(first.tolist())) == VAL
    rest, held = hold_out(data, VAL, seed=3)
    assert _indices(held.images) == first.tolist()
    trained = set(_indices(rest.images))
    assert not trained & set(first.tolist()) and len(trained) + VAL == len(labels) == len(trained | set(first.tolist()))
    assert torch.equal(rest.labels, labels[sorted(trained)]) and torch.equal(held.labels, labels[first])


@pytest.mark.parametrize("n", [DIGITS_TRAIN, DIGITS_TRAIN + 1])
def test_holding_out_every_training_image_is_one_line(n: int) -> None:
    with pytest.raises(UserError, match=f"cannot hold out {n} of {DIGITS_TRAIN} training images") as err:
        holdout_indices(load_dataset("digits", "train").labels, n, seed=0)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- a run never reads a test image
class ForbiddenSplit(AssertionError):
    """The test split was loaded while it was forbidden."""


class Guard:
    """The digits factory, instrumented: every loaded split is logged, the train split comes with each image's index
    stamped into two pixels, and loading the test split while ``forbid_test`` raises :class:`ForbiddenSplit`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = DATASETS.get("digits")
        self.loaded: list[str] = []
        self.forbid_test = True
        monkeypatch.setitem(DATASETS._factories, "digits", self.factory)

    def factory(self, split: str, *, root: str | Path | None = None, download: bool = False) -> ImageDataset:
        self.loaded.append(split)
        if split == "test" and self.forbid_test:
            raise ForbiddenSplit("the test split was loaded during training")
        data = self.real(split, root=root, download=download)
        if split == "train":  # stamp each image's index into its two top-left pixels (blank in digits' corners)
            stamp = _stamped(len(data), data.labels).images[:, :, 0, :2]
            data.images[:, :, 0, :2] = stamp
        return data


def _record(calls: list[list[int]], function: Callable[..., Any], argument: int = 0) -> Callable[..., Any]:
    """``function``, logging the stamped indices of its positional ``argument`` (a batch or a data set)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        value = args[argument]
        calls.append(_indices(value.images if isinstance(value, ImageDataset) else value))
        return function(*args, **kwargs)

    return wrapper


def test_a_run_with_val_examples_trains_without_them_and_never_reads_a_test_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proved by instrumenting the data: the digits factory refuses the test split during training, every batch the
    method trains on and every per-epoch evaluation is logged by the images' own indices. Training draws from exactly
    the 1,377 images not held out, the per-epoch evaluation reads exactly the 60 held out; then ``eval --checkpoint
    best`` reads the test split for the first time, and its record says ``best`` was chosen on ``val``."""
    held = set(holdout_indices(load_dataset("digits", "train").labels, VAL, seed=0).tolist())
    guard = Guard(monkeypatch)
    evaluated: list[list[int]] = []
    monkeypatch.setattr(loop, "evaluate_clean_and_pgd", _record(evaluated, loop.evaluate_clean_and_pgd, argument=1))
    cfg = tiny_config(tmp_path, "val", **{"data.val_examples": VAL, "data.eval_examples": 0})
    trainer = Trainer(cfg, log=lambda _: None)
    trained: list[list[int]] = []
    trainer.method.loss = _record(trained, trainer.method.loss, argument=1)
    trainer.fit()

    seen = {i for batch in trained for i in batch}
    assert guard.loaded == ["train"]  # the test split was never even loaded
    rest = set(range(DIGITS_TRAIN)) - held
    assert sorted(_indices(trainer.loader.images)) == sorted(rest)  # what training draws from: all the others
    assert seen <= rest and len(seen) > len(rest) // 2  # the batches trained on: none held out
    assert len(evaluated) == cfg.train.epochs and all(set(e) == held and len(e) == VAL for e in evaluated)

    guard.forbid_test = False  # the final evaluation: the first read of the test split
    record = evaluate_checkpoint(cfg.run_dir, attacks=["pgd-2"], which="best", n_examples=32, checks=False,
                                 log=lambda _: None)
    assert guard.loaded == ["train", "test"] and record["split"] == "test"
    assert record["selection"]["split"] == "val" and record["selection"]["on_test"] is False
    assert "selected_on_test" not in {f["code"] for f in record["flags"]}


def test_the_guard_catches_a_run_that_evaluates_on_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instrument's positive control: a run without ``val_examples`` loads the test split at once."""
    guard = Guard(monkeypatch)
    with pytest.raises(ForbiddenSplit):
        Trainer(tiny_config(tmp_path, "test"), log=lambda _: None)
    assert guard.loaded == ["train", "test"]


# ------------------------------------------------------------------------------- records say how `best` was chosen
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny PGD-AT runs, ``val`` choosing ``best`` on 60 held-out training images and ``test`` on 64 test images."""
    out = tmp_path_factory.mktemp("runs")
    found = {}
    for name, extra in (("val", {"data.val_examples": VAL}), ("test", {})):
        cfg = tiny_config(out, name, **extra)
        train(cfg, log=lambda _: None)
        found[name] = cfg.run_dir
    return found


def _eval(run: Path, which: str, out: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code = main(["eval", str(run), "--checkpoint", which, "--attacks", "pgd-2", "--n-examples", "32", "--no-checks",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    return json.loads(out.read_text())


def _best_epoch(run: Path) -> int:
    return json.loads(checkpoint_path(run, "best").with_suffix(".json").read_text())["epoch"]


def test_eval_best_record_says_checkpoint_epoch_metric_and_split(runs: dict[str, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    val = _eval(runs["val"], "best", tmp_path / "val_best.json", capsys)
    assert val["selection"] == {"checkpoint": "best", "epoch": _best_epoch(runs["val"]), "metric": "robust_acc",
                                "split": "val", "examples": VAL, "on_test": False}
    assert val["flags"] == []
    last = _eval(runs["val"], "last", tmp_path / "val_last.json", capsys)
    assert last["selection"] == {"checkpoint": "last", "epoch": 2, "metric": None, "split": None, "examples": None,
                                 "on_test": False}


def test_a_checkpoint_chosen_on_test_is_flagged_in_the_record_and_on_the_leaderboard(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = _eval(runs["test"], "best", tmp_path / "test_best.json", capsys)
    epoch = _best_epoch(runs["test"])
    assert best["selection"] == {"checkpoint": "best", "epoch": epoch, "metric": "robust_acc", "split": "test",
                                 "examples": 64, "on_test": True}
    (flag,) = [f for f in best["flags"] if f["code"] == "selected_on_test"]
    assert f"best (epoch {epoch}): robust_acc on 64 test images" in flag["message"]
    printed = capsys.readouterr().out
    assert f"eps=0.1 (linf), checkpoint best (epoch {epoch}): robust_acc on 64 test images" in printed
    assert "FLAG selected_on_test" in printed  # printed under the table too
    last = _eval(runs["test"], "last", tmp_path / "test_last.json", capsys)
    assert last["selection"]["on_test"] is False and last["flags"] == []  # last is not chosen by the test split
    _eval(runs["val"], "best", tmp_path / "val_best.json", capsys)

    board = tmp_path / "board"
    records = [tmp_path / f"{n}.json" for n in ("test_best", "test_last", "val_best")]
    assert main(["report", "--leaderboard", *map(str, records), "--out", str(board)]) == 0
    text = (board / "leaderboard.md").read_text()
    assert len(text.splitlines()) == 1 + 2 + 3  # the mark, the header, a row per record
    flagged = [line for line in text.splitlines() if "selected_on_test" in line]
    assert len(flagged) == 1
    assert f"| best (epoch {epoch}): robust_acc on 64 test images | selected_on_test |" in flagged[0]
    assert f"| best (epoch {_best_epoch(runs['val'])}): robust_acc on {VAL} val images | none |" in text
    assert "| last (epoch 2) | none |" in text
    page = (board / "leaderboard.html").read_text()
    assert f"best (epoch {epoch}): robust_acc on 64 test images" in page
    assert '<span class="flag">selected_on_test</span>' in page


def test_an_older_checkpoint_without_selection_is_unknown(runs: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    tensors, meta = load_checkpoint(checkpoint_path(runs["test"], "best"))
    old = tmp_path / "old" / "checkpoints" / "best.safetensors"
    old.parent.mkdir(parents=True)
    save_checkpoint(old, tensors, {k: v for k, v in meta.items() if k != "selection"})
    record = _eval(old, "best", tmp_path / "old.json", capsys)
    assert record["selection"] == {"checkpoint": "best", "epoch": meta["epoch"], "metric": "unknown",
                                   "split": "unknown", "examples": None, "on_test": "unknown"}
    assert record["flags"] == []  # not known to be chosen on test: said, not flagged
    board = tmp_path / "board"
    assert main(["report", "--leaderboard", str(tmp_path / "old.json"), "--out", str(board)]) == 0
    assert f"best (epoch {meta['epoch']}): chosen on unknown images" in (board / "leaderboard.md").read_text()


# ------------------------------------------------------------------------------------------------- the settings
def test_val_examples_makes_the_eval_split_val_and_the_run_resumes_as_itself(runs: dict[str, Path]) -> None:
    cfg = tiny_config(runs["val"].parent, "val", **{"data.val_examples": VAL})
    assert (cfg.data.eval_split, cfg.data.val_examples) == ("val", VAL)
    messages: list[str] = []
    train(cfg, log=messages.append)  # config.yaml (eval_split: val written out) reads back as the same run
    assert any("already complete" in m for m in messages)


def test_study_records_filed_before_val_examples_existed_still_match(tmp_path: Path) -> None:
    """The committed CIFAR-10 fast study's settings file predates ``data.val_examples``: left at 0, the key stays out
    of a record's settings, so the study does not refuse its own records."""
    results = tmp_path / "results_fast"
    shutil.copytree(ROOT / "docs" / "results_fast", results)
    study = Study(load_study("cifar10s_fast"), Options(data_root="/data", runs=str(tmp_path / "runs"),
                                                      results=str(results), page=str(tmp_path / "p.md"),
                                                      readme="none"))
    assert all("config data.val_examples" not in kept for kept in json.loads((results / SETTINGS_FILE).read_text())
               .values())
    study.check_records()  # a settings mismatch raises UserError naming the key


@pytest.mark.parametrize("args, needle", [
    (["data.val_examples=100", "data.eval_split=test"], "data.eval_split=test asks for another split"),
    (["data.val_examples=100", "data.eval_split=train"], "data.eval_split=train asks for another split"),
    (["data.eval_split=val"], "data.eval_split=val reads the training images data.val_examples holds out"),
    (["data.val_examples=-5"], "data.val_examples must be >= 0"),
    (["data.val_examples=1437"], "cannot hold out 1437 of 1437 training images"),
    (["data.val_examples=ten"], "data.val_examples: expected a whole number"),
])
def test_bad_settings_are_one_line_and_exit_2(args: list[str], needle: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "digits_pgd_at", f"out_dir={tmp_path}", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "digits_pgd_at").exists()  # refused before any file of the run


def test_choosing_best_on_test_is_warned_when_the_run_starts(tmp_path: Path) -> None:
    def warned(*overrides: str) -> bool:
        return any("flagged selected_on_test" in w for w in config_warnings(build_config({}, list(overrides))))

    assert warned() and warned("train.checkpoint_rule=clean_acc")
    assert not warned("data.val_examples=100") and not warned("train.checkpoint_rule=last")
    assert not warned("data.eval_split=train")


def test_best_is_chosen_by_clean_accuracy_when_the_per_epoch_evaluation_attacks_nothing(tmp_path: Path) -> None:
    def chosen_by(name: str, **extra: object) -> str | None:
        return Trainer(tiny_config(tmp_path, name, **extra), log=lambda _: None).chosen_by

    assert chosen_by("a") == "robust_acc"
    assert chosen_by("b", **{"train.eval_pgd_steps": 0}) == "clean_acc"
    assert chosen_by("c", **{"train.checkpoint_rule": "last"}) is None
