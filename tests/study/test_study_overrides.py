"""Study overrides: the most specific wins (``--override`` > row > study-wide), the keys the study sets for each
job itself are refused in any of them, and a row's config is checked against ``finetune_from`` before anything
runs. Plans are built without training: :class:`~robustlab.study.plan.Study` resolves every job's config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from robustlab.cli import main
from robustlab.errors import UserError
from robustlab.study.plan import Options, Study
from robustlab.study.spec import RESERVED, parse_study


def _study(tmp_path: Path, study: tuple[str, ...] = (), row: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """Two rows on one seed; ``study``/``row`` are the study-wide and the ablation row's overrides."""
    return {"seeds": [0], "overrides": list(study),
            "outputs": {"runs": str(tmp_path / "runs"), "results": str(tmp_path / "res"),
                        "page": str(tmp_path / "page.md")},
            "evaluation": {"attacks": ["pgd-20"], "n_examples": 10, "batch_size": 10},
            "rows": [{"label": "pgd_at", "config": "digits_pgd_at"},
                     {"label": "ablation", "config": "digits_pgd_at", "name": "ablation", "base": "pgd_at",
                      "overrides": list(row), **extra}]}


def _plan(data: dict[str, Any], cli: tuple[str, ...] = ()) -> Study:
    return Study(parse_study(data, "test"), Options(overrides=cli))


def test_the_most_specific_override_wins(tmp_path: Path) -> None:
    """Row over study-wide (the ablation trains 2 epochs, its base 1), and ``--override`` over both."""
    study = _plan(_study(tmp_path, study=("train.epochs=1",), row=("train.epochs=2",)))
    base, ablation = study.jobs
    assert (study.config(base).train.epochs, study.config(ablation).train.epochs) == (1, 2)
    command = study.train_command(ablation)
    assert command.index("train.epochs=2") > command.index("train.epochs=1")  # `robustlab train`: the last wins
    cli = _plan(_study(tmp_path, study=("train.epochs=1",), row=("train.epochs=2",)), cli=("train.epochs=3",))
    assert [cli.config(job).train.epochs for job in cli.jobs] == [3, 3]


@pytest.mark.parametrize("item", ["seed=1", " seed =1", "name=x", "out_dir=elsewhere", "data.root=/data",
                                  "data={root: /data}"])
@pytest.mark.parametrize("where", ["study", "row", "cli"])
def test_keys_the_study_sets_per_job_are_refused_in_every_override(where: str, item: str, tmp_path: Path) -> None:
    key = "data.root" if item.startswith("data") else item.split("=")[0].strip()
    data = _study(tmp_path, **{where: (item,)}) if where != "cli" else _study(tmp_path)
    with pytest.raises(UserError, match=f"sets {key}, which the study sets for each job itself") as caught:
        _plan(data, cli=(item,) if where == "cli" else ())
    assert RESERVED[key] in str(caught.value)


def test_a_refused_override_is_one_line_before_anything_runs(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(tmp_path)))
    for action in ("run", "plan", "report"):
        assert main(["study", action, str(path), "--override", "seed=1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--override: 'seed=1' sets seed" in err and "seeds: list" in err, err
    assert not (tmp_path / "runs").exists()


def test_every_key_the_plan_sets_per_job_is_reserved(tmp_path: Path) -> None:
    study = Study(parse_study(_study(tmp_path), "test"), Options(data_root="/data"))
    assert {item.split("=")[0] for item in study.overrides(study.jobs[0])} == set(RESERVED)


def test_finetune_from_a_row_needs_a_finetuning_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused when the study is built, so no earlier row trains first."""
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(tmp_path, study=("train.epochs=1",), finetune_from="pgd_at")))
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "row 'ablation': digits_pgd_at is not a fine-tuning config" in err, err
    assert not (tmp_path / "runs").exists()
    ok = _study(tmp_path, finetune_from="pgd_at")
    ok["rows"][1]["config"] = "digits_finetune_pgd_at"
    study = _plan(ok)
    assert study.train_command(study.jobs[1])[:3] == ["finetune", "digits_finetune_pgd_at", "--from"]
