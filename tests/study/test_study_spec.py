"""Bad study files: one line on stderr naming the problem, exit 2, nothing run or written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from robustlab.cli import main

GOOD: dict[str, Any] = {
    "seeds": [0, 1],
    "outputs": {"runs": "RUNS", "results": "RUNS/results", "page": "RUNS/page.md"},
    "evaluation": {"attacks": ["pgd-20"], "n_examples": 10, "batch_size": 10},
    "rows": [{"label": "natural", "config": "digits_natural"},
             {"label": "pgd_at", "config": "digits_pgd_at", "base": "natural"}],
}


def _bad(change: Any) -> dict[str, Any]:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    change(data)
    return data


CASES = {
    "unknown row": (lambda d: d["rows"][1].update(base="natral"),
                    "base 'natral' is not a row of the study; did you mean 'natural'?"),
    "unknown source row": (lambda d: d["rows"][1].update(finetune_from="nope"),
                           "finetune_from 'nope' is not a row of the study"),
    "cycle": (lambda d: d["rows"][0].update(base="pgd_at"),
              "rows form a cycle through base/finetune_from: natural -> pgd_at -> natural; break it"),
    "self cycle": (lambda d: d["rows"][0].update(base="natural"),
                   "cycle through base/finetune_from: natural -> natural; break it"),
    "missing config": (lambda d: d["rows"][1].update(config="digits_pgd_att"),
                       "row 'pgd_at': config 'digits_pgd_att' is neither a file nor a bundled config; did you mean "
                       "digits_pgd_at"),
    "seeds empty": (lambda d: d.update(seeds=[]), "seeds must be a non-empty list of integers"),
    "seeds missing": (lambda d: d.pop("seeds"), "needs seeds, e.g. seeds: [0, 1, 2]"),
    "row seeds outside": (lambda d: d["rows"][1].update(seeds=[3]),
                          "row 'pgd_at' seeds [3] are not all among the study's seeds [0, 1]"),
    "source lacks seeds": (lambda d: (d["rows"][0].update(seeds=[0]), d["rows"][1].update(finetune_from="natural")),
                           "row 'pgd_at' needs finetune_from 'natural' on seeds [1]"),
    "unknown top key": (lambda d: d.update(sedes=[0]), "unknown key 'sedes' in study"),
    "unknown row key": (lambda d: d["rows"][0].update(bse="x"), "unknown key 'bse' in rows[0]; did you mean base?"),
    "unknown evaluation key": (lambda d: d["evaluation"].update(n_images=5), "unknown key 'n_images' in evaluation"),
    "unknown attack": (lambda d: d["evaluation"].update(attacks=["pgdd-20"]), "pgdd"),
    "bad n_examples": (lambda d: d["evaluation"].update(n_examples=0),
                       "evaluation.n_examples must be a positive integer"),
    "duplicate label": (lambda d: d["rows"][1].update(label="natural"), "row label 'natural' is used twice"),
    "shared run folder": (lambda d: d["rows"][1].update(config="digits_natural"),
                          "two rows would share the run folder digits_natural_s*"),
    "no outputs": (lambda d: d.pop("outputs"), "needs outputs: {runs, results, page}"),
    "claim names unknown metric": (
        lambda d: d.update(page={"claims": [{"title": "t", "decisive": ["natural", "pgd_at", "autoattack"]}]}),
        "page names metric 'autoattack'; use one of clean, worst, adaptive, pgd-20"),
    "plot names unknown row": (lambda d: d.update(page={"plots": [{"title": "t", "rows": ["x"],
                                                                   "file": "p/accuracy.png"}]}),
                               "page names row 'x', which is not a row of the study"),
    "fine-tuning config without a source": (lambda d: d["rows"][1].update(config="digits_finetune_pgd_at"),
                                            "row 'pgd_at': digits_finetune_pgd_at is a fine-tuning config; give the "
                                            "row finetune_from: ROW"),
    "not a mapping": (lambda d: d["rows"].append("digits_trades"), "rows[2] must be a mapping"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_study_file_gives_one_line_and_exit_2(case: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    change, message = CASES[case]
    data = _bad(change)
    data["outputs"] = {k: v.replace("RUNS", str(tmp_path / "runs")) for k, v in data.get("outputs", {}).items()} or None
    if data["outputs"] is None:
        data.pop("outputs")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    for action in ("run", "report", "plan"):
        assert main(["study", action, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("robustlab: error: ") and message in err, err
    assert not (tmp_path / "runs").exists()


def test_good_study_file_plans_every_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The unbroken file of the cases above is accepted: ``plan`` lists 2 trainings and 2 evaluations per seed."""
    data = _bad(lambda d: d.update(outputs={"runs": str(tmp_path / "runs"), "results": str(tmp_path / "res"),
                                            "page": str(tmp_path / "p.md")}))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(data))
    assert main(["study", "plan", str(tmp_path / "study.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "8 steps to do"
    assert (sum(line.startswith("robustlab train ") for line in out) == 4
            and sum(" eval " in f" {line}" for line in out) == 4)


def test_unknown_study_name_suggests_a_bundled_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "report", "cifar10"]) == 2
    assert "study 'cifar10' is neither a file nor a bundled study; did you mean cifar10s" in capsys.readouterr().err


def test_invalid_yaml_names_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.yaml").write_text("seeds: [0, 1\nrows: []\n")
    assert main(["study", "run", str(tmp_path / "s.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not valid YAML at line" in err


@pytest.mark.parametrize("text,message", [
    ("{nope.x}", "page text names {nope.x} but 'nope' is unknown; use one of"),
    ("{digits_pgd_at.train.epoch}", "page text names {digits_pgd_at.train.epoch} but 'epoch' is not a key there"),
    ("{mean.pgd_at.clean", "has a bad placeholder"),
])
def test_bad_page_text_fails_before_anything_runs(text: str, message: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A claim's text is filled when the page is built, which ``run`` does before its first step."""
    data = _bad(lambda d: d.update(page={"claims": [{"decisive": ["natural", "pgd_at", "worst"],
                                                     "details": [{"text": text}]}]}))
    data["outputs"] = {k: v.replace("RUNS", str(tmp_path / "runs")) for k, v in data["outputs"].items()}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    for action in ("run", "report"):
        assert main(["study", action, str(tmp_path / "s.yaml")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_evaluation_verify_reaches_the_eval_command_and_bad_values_are_one_line() -> None:
    from robustlab.errors import UserError
    from robustlab.study.plan import Study
    from robustlab.study.spec import load_study

    spec = load_study("cifar10s_fast")
    assert spec.evaluation.verify == 200 and spec.evaluation.attacks == ("fast",)
    command = Study(spec).eval_command(Study(spec).jobs[1])
    assert command[command.index("--verify") + 1] == "200"
    assert "verify" not in Study(load_study("cifar10s")).settings(Study(load_study("cifar10s")).jobs[0])
    from robustlab.study.spec import _evaluation

    assert _evaluation({"verify": "all"}).verify == "all"
    for bad in (0, -3, "some", True, 1.5):
        with pytest.raises(UserError, match="evaluation.verify"):
            _evaluation({"verify": bad})
