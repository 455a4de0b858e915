"""The CIFAR-10 study's machinery on a tiny synthetic image folder: configs, --quick end to end, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from robustlab.config import bundled_config_names, load_config
from robustlab.evaluate.suite import build_suite

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "benchmarks" / "cifar_study.py"


def _image_folder(root: Path, classes: int = 4, train: int = 6, test: int = 6) -> Path:
    """Random 32×32 RGB images in ROOT/train|test/CLASS/, half JPEG and half PNG, seeded."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                pixels[..., c % 3] //= 4  # a weak class cue
                Image.fromarray(pixels).save(folder / f"{i:04d}.{'jpg' if i % 2 else 'png'}")
    return root


def test_study_configs_share_one_protocol() -> None:
    names = [n for n in bundled_config_names() if n.startswith("cifar10s_")]
    assert len(names) == 14
    configs = {n: load_config(n, ["data.root=/data"]) for n in names}
    reference = configs["cifar10s_pgd_at"]
    for name, cfg in configs.items():
        assert (cfg.data, cfg.model, cfg.method.attack) == (reference.data, reference.model, reference.method.attack), name
        assert cfg.data.name == "imagefolder" and cfg.data.root == "/data"
        if "finetune" not in name:
            assert (cfg.optim, cfg.schedule) == (reference.optim, reference.schedule), name
    assert load_config("cifar10s_pgd_at").data.root is None  # the one override a user gives


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(STUDY), *args], capture_output=True, text=True, env=env, timeout=600)


def test_quick_study_end_to_end_then_rerun_only_prints(tmp_path: Path) -> None:
    """--quick on 48 random images: every step runs through the CLI, records and the page appear; a lost
    record reruns only its evaluation; a finished study's rerun prints the table and nothing else."""
    data = _image_folder(tmp_path / "data")
    out = tmp_path / "study"
    args = ["--quick", "--data-root", str(data), "--out-dir", str(out), "--n-examples", "16", "--batch-size", "8",
            "--override", "model.options={width: 4, depths: [1, 1]}", "data.batch_size=8", "data.eval_examples=8",
            "method.attack.steps=1", "train.eval_pgd_steps=1", "data.options.cache=false"]
    first = _run(args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "ETA" in first.stdout and "robustlab eval" in first.stdout
    results = out / "results"
    labels = ["cifar10s_natural_s0", "cifar10s_pgd_at_s0", "cifar10s_pgd_at_fsr_s0",
              "cifar10s_finetune_pgd_at_s0", "cifar10s_finetune_afd_s0"]
    records = {name: json.loads((results / f"{name}.json").read_text()) for name in labels}
    assert all(r["n_examples"] == 16 and r["checks_run"] for r in records.values())
    assert "adaptive" in records["cifar10s_pgd_at_fsr_s0"]["attacks"] and "autoattack" in records["cifar10s_pgd_at_s0"]["attacks"]
    assert len({r["data_hash"] for r in records.values()}) == 1  # the same test images for every model
    page = (out / "results.md").read_text()
    fsr = records["cifar10s_pgd_at_fsr_s0"]
    assert f"| pgd_at+fsr | 1 | {100 * fsr['clean_acc']:.1f} |" in page
    assert "pgd_at+fsr − pgd_at (worst, 1 seed × 16 images)" in page and "feature gap" in page
    assert (results / "plots_finetune" / "feature_gap.png").is_file() and "timings.json" in os.listdir(results)
    assert not (ROOT / "docs" / "results.md").exists() or "quick" not in (ROOT / "docs" / "results.md").read_text()
    before = page
    (results / "cifar10s_finetune_afd_s0.json").unlink()  # a lost record: only that evaluation reruns
    again = _run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 steps to do (0 trainings, 1 evaluations)" in again.stdout
    wall = "## Wall times"  # the rerun evaluation adds its seconds; every other line is unchanged
    assert (out / "results.md").read_text().split(wall)[0] == before.split(wall)[0]
    last = _run(args)
    assert last.returncode == 0 and "steps to do" not in last.stdout and "robustlab" not in last.stdout
    assert last.stdout.startswith("| configuration | seeds |")


def _study(tmp_path: Path) -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cifar_study

    return cifar_study.Study(cifar_study.parse_args(["--data-root", "/data", "--out-dir", str(tmp_path / "runs"),
                                                     "--results", str(tmp_path / "res"), "--doc", str(tmp_path / "r.md"),
                                                     "--readme", str(tmp_path / "none.md")]))


def _write_record(study: Any, label: str, seed: int, correct: np.ndarray) -> None:
    """A PGD-20-only evaluation record whose per-sample verdicts are ``correct`` (robust) or broken."""
    verdicts = np.where(correct, -1, 0).tolist()
    record = {"run": label, "dataset": "imagefolder", "n_examples": len(correct), "seed": 0, "eps": 8 / 255, "norm": "linf",
              "clean_acc": 1.0, "robust_acc": float(correct.mean()), "flags": [],
              "attacks": {"pgd-20": {"robust_acc": float(correct.mean())}},
              "per_sample": {"clean": [1] * len(correct), "broken_by": {"pgd-20": verdicts}}}
    path = study.record_path(study.by_key[(label, seed)])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_results_page_from_constructed_records(tmp_path: Path) -> None:
    """Three seeds of PGD-AT and PGD-AT+FSR with a large constructed gain: the table shows mean ± std over
    seeds and the paired interval, and the FSR claim is held; claims without records say so."""
    study = _study(tmp_path)
    from _study_report import write_results

    rng = np.random.default_rng(0)
    for seed in range(3):
        base = rng.random(400) < 0.3
        gained = base | (rng.random(400) < 0.2 + 0.05 * seed)
        for label, correct in (("pgd_at", base), ("pgd_at+fsr", gained)):
            _write_record(study, label, seed, correct)
    table = write_results(study)
    fsr = [line for line in table.splitlines() if line.startswith("| pgd_at+fsr |")][0]
    accs = [json.loads(study.record_path(study.by_key[("pgd_at+fsr", s)]).read_text())["robust_acc"] for s in range(3)]
    assert f"| 3 | 100.0 ± 0.0 | {100 * np.mean(accs):.1f} ± {100 * np.std(accs, ddof=1):.1f} |" in fsr and "vs pgd_at" in fsr
    page = (tmp_path / "r.md").read_text()
    assert "status: partial: 6 of 33 evaluations finished" in page
    assert "**FSR: robust accuracy over its base" in page and "**held** at this scale — pgd_at+fsr − pgd_at (worst, 3 seeds × 400 images)" in page
    assert "**ANCRA: its gain survives adaptive attacks (worst case incl. adaptive decides)**: not evaluated yet" in page


@pytest.mark.parametrize("gain", [0.0, 0.3])
def test_uad_claim_names_the_component_that_carries_the_gain(tmp_path: Path, gain: float) -> None:
    """One-component UAD-AT runs against PGD-AT: the one with a clear gain is named; with none, the page says
    none carries it and names the best one, and is "not evaluated yet" until all three exist."""
    study = _study(tmp_path)
    from _study_report import write_results

    rng = np.random.default_rng(1)
    base = rng.random(400) < 0.3
    _write_record(study, "pgd_at", 0, base)
    ablations = {"pgd_at+uad: dsu only": base & (rng.random(400) < 0.8), "pgd_at+uad: iga only": base & (rng.random(400) < 0.95),
                 "pgd_at+uad: reference only": base | (rng.random(400) < gain)}
    _write_record(study, "pgd_at+uad: dsu only", 0, ablations["pgd_at+uad: dsu only"])
    write_results(study)
    assert "which component carries it: not every one-component run is evaluated yet" in (tmp_path / "r.md").read_text()
    for label in ("pgd_at+uad: iga only", "pgd_at+uad: reference only"):
        _write_record(study, label, 0, ablations[label])
    write_results(study)
    page = (tmp_path / "r.md").read_text()
    if gain:
        assert "which component carries it: reference only (alone above PGD-AT, interval above 0)" in page
    else:
        assert "which component carries it: none; no component alone lifts PGD-AT (no interval above 0), " \
               "the best alone is reference only (+0.0 [+0.0, +0.0] points)" in page


def test_report_writes_the_page_from_present_records_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--report on a study with one record: the page says partial, the table holds the row, nothing trains."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cifar_study

    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- CIFAR-10 study table: written by benchmarks/cifar_study.py from docs/results/ -->\nold\n"
                      "<!-- end of the CIFAR-10 study table -->\nafter\n")
    argv = ["--data-root", "/nonexistent", "--out-dir", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
            "--doc", str(tmp_path / "r.md"), "--readme", str(readme)]
    study = cifar_study.Study(cifar_study.parse_args(argv))
    record = {"run": "natural", "dataset": "imagefolder", "n_examples": 4, "seed": 0, "eps": 8 / 255, "norm": "linf",
              "clean_acc": 0.75, "robust_acc": 0.25, "flags": [], "attacks": {"pgd-20": {"robust_acc": 0.25}},
              "per_sample": {"clean": [1, 1, 1, 0], "broken_by": {"pgd-20": [-1, 0, 0, -1]}}}
    path = study.record_path(study.by_key[("natural", 0)])
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    cifar_study.main([*argv, "--report"])
    assert capsys.readouterr().out.splitlines()[-1].startswith("| natural | 1 | 75.0 |")
    assert "status: partial: 1 of 33 evaluations finished" in (tmp_path / "r.md").read_text()
    assert not (tmp_path / "runs").exists()
    block = readme.read_text()
    assert "old" not in block and "\n| natural | 1 | 75.0 |" in block and "Status: partial: 1 of 33" in block
    assert block.startswith("# x\n") and block.endswith("<!-- end of the CIFAR-10 study table -->\nafter\n")


def test_wall_times_keep_the_seconds_of_steps_cut_short(tmp_path: Path) -> None:
    """A step killed at a session's end loses the study's timer, and its resumed rest is timed alone; the page
    then counts the finished epochs' and attacked batches' seconds that the records kept, whichever is more."""
    study = _study(tmp_path)
    from _study_report import Page

    _write_record(study, "pgd_at", 0, np.ones(4, dtype=bool))
    record_path = study.record_path(study.by_key[("pgd_at", 0)])
    record = json.loads(record_path.read_text())
    record["attacks"] = {"pgd-20": {"robust_acc": 1.0, "time_s": 300.0}, "autoattack": {"robust_acc": 1.0, "time_s": 200.0}}
    record_path.write_text(json.dumps(record))
    epochs = [{"kind": "step", "step": 1, "loss": 1.0}, {"kind": "epoch", "epoch": 1, "time_s": 100.0},
              {"kind": "feature_gap", "epoch": 1, "feature_gap": 1.0}, {"kind": "epoch", "epoch": 2, "time_s": 150.0}]
    (study.results / f"{study.by_key[('pgd_at', 0)].name}.metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    name = study.by_key[("pgd_at", 0)].name
    study.timings = {name: {"train_s": 120.0, "eval_s": 450.0}, "cifar10s_trades_s0": {"train_s": 360.0, "eval_s": 90.0}}
    page = Page(study)
    assert page.step_seconds(name) == (250.0, 500.0)  # both records kept more than the timer
    assert page.step_seconds("cifar10s_trades_s0") == (360.0, 90.0)  # no records: the timer alone
    text = page.wall_times()
    assert f"| {name} | 250 | 500 |" in text and "| cifar10s_trades_s0 | 360 | 90 |" in text
    assert "Total: 0.33 h of this machine." in text  # (250 + 500 + 360 + 90) / 3600


def test_flags_section_lists_each_flag_with_its_record(tmp_path: Path) -> None:
    """The table's flag column only names codes; the page's Flags section gives run, seed and the message."""
    study = _study(tmp_path)
    from _study_report import write_results

    for seed in (0, 1):
        _write_record(study, "pgd_at", seed, np.ones(4, dtype=bool))
    write_results(study)
    assert "## Flags\n\nA flag is a warning" in (tmp_path / "r.md").read_text()
    assert "No record has a flag." in (tmp_path / "r.md").read_text()
    path = study.record_path(study.by_key[("pgd_at", 1)])
    record = json.loads(path.read_text())
    record["flags"] = [{"code": "monotonicity", "message": "pgd-50 left 2 more of 64 probe samples accurate", "value": 0.03}]
    path.write_text(json.dumps(record))
    table = write_results(study)
    page = (tmp_path / "r.md").read_text()
    assert "- pgd_at seed 1: `monotonicity`: pgd-50 left 2 more of 64 probe samples accurate" in page
    assert "No record has a flag." not in page and "pgd_at seed 0:" not in page
    assert [line for line in table.splitlines() if line.startswith("| pgd_at |")][0].endswith("| monotonicity |")


OLD_PARAMS = {"square": {"queries": 5000, "p_init": 0.8}, "fab-t": {"steps": 100}}  # before the split: no mode, no final_search
REFERENCE_PARAMS = build_suite(["autoattack"], eps=8 / 255, norm="linf", step_size=2 / 255)[0].describe()  # what a record lists now


@pytest.mark.parametrize("params,group", [(OLD_PARAMS, "autoattack+"), (REFERENCE_PARAMS, "autoattack")])
def test_autoattack_column_is_labelled_with_the_group_its_params_show(tmp_path: Path, params: dict, group: str) -> None:
    """Old records (no Square mode, no FAB final_search: the stronger then-defaults) are labelled autoattack+,
    records with the reference's settings autoattack, on the table and in the claims; records are not rewritten."""
    study = _study(tmp_path)
    from _study_report import write_results

    for label in ("natural", "pgd_at"):
        _write_record(study, label, 0, np.arange(40) % (2 if label == "pgd_at" else 5) == 0)
        path = study.record_path(study.by_key[(label, 0)])
        record = json.loads(path.read_text())
        record["attacks"]["autoattack"] = record["attacks"]["pgd-20"]
        record["per_sample"]["broken_by"]["autoattack"] = record["per_sample"]["broken_by"]["pgd-20"]
        record["attack_params"] = {"autoattack": params}
        path.write_text(json.dumps(record))
    before = path.read_text()
    table = write_results(study)
    assert f"| AutoAttack (`{group}`) |" in table.splitlines()[0]
    page = (tmp_path / "r.md").read_text()
    assert f"pgd_at − natural ({group}, 1 seed × 40 images)" in page and f"as the group `{group}`" in page
    assert path.read_text() == before
