"""``robustlab export --robustbench`` and ``robustlab report --leaderboard``: RobustBench-shaped entries from
evaluation records, and the static leaderboard page read back from real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from robustlab.cli import main
from robustlab.evaluate.suite import build_suite
from robustlab.ownership import MARK

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# RobustBench's model_info keys and their types (model_info/cifar10/Linf/*.json); "external" is optional
TYPES = {"link": str, "name": str, "authors": str, "additional_data": bool, "number_forward_passes": int,
         "dataset": str, "venue": str, "architecture": str, "eps": str, "clean_acc": str, "reported": str,
         "autoattack_acc": (str, type(None)), "footnote": str}
PERCENT = re.compile(r"^\d{1,3}\.\d\d$")


def _record(tmp_path: Path, name: str, clean: float, groups: dict[str, float], worst: float,
            flags: tuple[str, ...] = (), **fields: Any) -> Path:
    """An evaluation record as robustlab eval writes it (only the fields export reads), its groups' member params
    real."""
    specs = build_suite([g for g in groups if g.startswith("autoattack")], eps=8 / 255, norm="linf", step_size=2 / 255)
    record: dict[str, Any] = {
        "robustlab_version": "0.1.0", "run": name, "architecture": "wide_resnet", "dataset": "cifar10", "split": "test",
        "n_examples": 200, "eps": 8 / 255, "norm": "linf", "eps_label": "8/255", "clean_acc": clean,
        "robust_acc": worst, "attacks": {g: {"robust_acc": acc} for g, acc in groups.items()},
        "attack_params": {s.name: s.describe() for s in specs},
        "flags": [{"code": f, "message": f"{f} fired", "value": 0.1} for f in flags],
        "per_sample": {"clean": [1] * 200, "broken_by": {g: [-1] * 200 for g in groups}}, **fields,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(record))
    return path


def _export(path: Path, *extra: str) -> dict[str, Any]:
    out = path.with_suffix(".rb.json")
    assert main(["export", str(path), "--robustbench", "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_export_writes_robustbench_fields(tmp_path: Path) -> None:
    path = _record(tmp_path, "wrn", 0.8712, {"autoattack": 0.5901, "autoattack+": 0.5855}, 0.5855)
    entry = _export(path, "--name", "Some Defense", "--paper", "https://arxiv.org/abs/0000.00000", "--reported", "60.1",
                    "--venue", "ICML 2020", "--authors", "A. Author", "--architecture", "WideResNet-28-10")
    for key, kind in TYPES.items():
        assert isinstance(entry[key], kind), (key, entry[key])
    assert set(entry) <= set(TYPES) | {"external"}
    assert entry["eps"] == "8/255" and entry["clean_acc"] == "87.12" and entry["name"] == "Some Defense"
    assert entry["autoattack_acc"] == "59.01"  # from the reference group only
    assert entry["external"] == "58.55"  # the worst case: the stronger group broke more
    assert all(PERCENT.match(entry[k]) for k in ("clean_acc", "autoattack_acc", "external"))
    assert entry["architecture"] == "WideResNet-28-10" and entry["reported"] == "60.1"


def test_export_takes_autoattack_acc_only_from_the_reference_group(tmp_path: Path) -> None:
    strong_only = _export(_record(tmp_path, "strong", 0.9, {"autoattack+": 0.4}, 0.4))
    assert strong_only["autoattack_acc"] is None and strong_only["external"] == "40.00"
    assert "No reference AutoAttack ran" in strong_only["footnote"]
    same = _export(_record(tmp_path, "same", 0.9, {"autoattack": 0.5}, 0.5, flags=("black_box",)))
    assert same["autoattack_acc"] == "50.00" and "external" not in same  # nothing broke more
    assert "black_box" in same["footnote"]


def test_export_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "missing.json"), "--robustbench"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.json not found" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["export", str(bad), "--robustbench", "--out", str(tmp_path / "o.json")]) == 2
    assert not (tmp_path / "o.json").exists()


def _rows_in_chromium(page: Path, profile: Path, fragment: str = "") -> list[list[str]]:
    """The page's table rows after its script ran, as real headless Chromium renders them."""
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--dump-dom", page.resolve().as_uri() + fragment],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    body = dom.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r'<td[^>]*data-value="([^"]*)"', row) for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason="needs Chromium (apt-get install chromium; .ci/run installs it)")
def test_leaderboard_page_in_headless_chromium(tmp_path: Path) -> None:
    records = [
        _record(tmp_path, "weak", 0.95, {"autoattack": 0.10}, 0.10),
        _record(tmp_path, "flagged", 0.70, {"autoattack": 0.50, "autoattack+": 0.30}, 0.30, flags=("black_box",)),
        _record(tmp_path, "strong", 0.85, {"autoattack": 0.55}, 0.55),
    ]
    out = tmp_path / "board"
    assert main(["report", "--leaderboard", *map(str, records), "--out", str(out)]) == 0
    page = out / "leaderboard.html"
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)  # self-contained
    ranked = _rows_in_chromium(page, tmp_path / "p1")
    assert [r[1] for r in ranked] == ["strong", "flagged", "weak"]  # by external where present, else autoattack_acc
    assert ranked[1][4:7] == ["50.00", "30.00", "30.0"] and ranked[1][-1] == "black_box"
    by_clean = _rows_in_chromium(page, tmp_path / "p2", "#sort=-clean_acc")
    assert [r[1] for r in by_clean] == ["weak", "strong", "flagged"]
    mark, *markdown = (out / "leaderboard.md").read_text().splitlines()
    assert mark == MARK
    assert markdown[2].startswith("| 1 | strong |") and "black_box" in markdown[3]


@pytest.mark.parametrize("field, value",
                         [("clean_acc", float("nan")), ("robust_acc", 7.5), ("autoattack", float("inf"))])
def test_records_with_accuracies_outside_0_1_are_refused_by_every_reader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: float
) -> None:
    """Issue 33: export and --leaderboard took NaN, infinity and 750%, and one NaN scrambled the whole ranking;
    the one record reader refuses them."""
    good = _record(tmp_path, "good", 0.8, {"autoattack": 0.5}, 0.5)
    bad = _record(tmp_path, "bad", 0.8, {"autoattack": 0.5}, 0.5)
    record = json.loads(bad.read_text())
    if field == "autoattack":
        record["attacks"]["autoattack"]["robust_acc"] = value
    else:
        record[field] = value
    bad.write_text(json.dumps(record))
    assert main(["export", str(bad), "--robustbench", "--out", str(tmp_path / "o.json")]) == 2
    assert "not an accuracy in [0, 1]" in capsys.readouterr().err
    assert main(["report", "--leaderboard", str(good), str(bad), "--out", str(tmp_path / "board")]) == 2
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "board").exists()


def _selection(which: str, epoch: int, metric: str | None, split: str | None, examples: int | None) -> dict[str, Any]:
    return {"checkpoint": which, "epoch": epoch, "metric": metric, "split": split, "examples": examples,
            "on_test": split == "test"}


def test_leaderboard_and_export_show_how_each_checkpoint_was_chosen(tmp_path: Path) -> None:
    """Issue 31: the checkpoint column says which checkpoint a record evaluated and on which images it was chosen
    ("unknown" for records without it, or with a malformed one); a test-chosen one carries its flag in both outputs."""
    on_test = {"code": "selected_on_test", "message": "chosen on test", "value": None}
    records = [
        _record(tmp_path, "tested", 0.9, {"autoattack": 0.6}, 0.6,
                selection=_selection("best", 7, "robust_acc", "test", 512)),
        _record(tmp_path, "validated", 0.9, {"autoattack": 0.5}, 0.5,
                selection=_selection("best", 9, "robust_acc", "val", 1000)),
        _record(tmp_path, "latest", 0.9, {"autoattack": 0.4}, 0.4, selection=_selection("last", 100, None, None, None)),
        _record(tmp_path, "older", 0.9, {"autoattack": 0.3}, 0.3),
        _record(tmp_path, "odd", 0.9, {"autoattack": 0.2}, 0.2, selection=["best"]),
    ]
    record = json.loads(records[0].read_text())
    records[0].write_text(json.dumps({**record, "flags": [on_test]}))
    out = tmp_path / "board"
    assert main(["report", "--leaderboard", *map(str, records), "--out", str(out)]) == 0
    rows = (out / "leaderboard.md").read_text().splitlines()[3:]
    assert [r.split(" | ")[-2:] for r in rows] == [
        ["best (epoch 7): robust_acc on 512 test images", "selected_on_test |"],
        ["best (epoch 9): robust_acc on 1000 val images", "none |"], ["last (epoch 100)", "none |"],
        ["unknown", "none |"], ["unknown", "none |"]]
    page = (out / "leaderboard.html").read_text()
    assert '<th data-key="selection" data-numeric="0">checkpoint</th>' in page
    assert 'data-value="best (epoch 7): robust_acc on 512 test images"' in page
    assert '<span class="flag">selected_on_test</span>' in page
    entry = _export(records[1])
    assert "Checkpoint: best (epoch 9): robust_acc on 1000 val images." in entry["footnote"]
    assert "Checkpoint" not in _export(records[3])["footnote"]  # a record from before selections: as it was
    assert "selected_on_test" in _export(records[0])["footnote"]
