"""robustlab report: Markdown tables from evaluation records, PNG curves from metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_runs import tiny_config

from robustlab.cli import main
from robustlab.evaluate import evaluate_checkpoint
from robustlab.train import train


def test_report_of_a_trained_and_evaluated_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config(tmp_path, "r", **{"train.epochs": 2})
    train(cfg, log=lambda _: None)
    record = evaluate_checkpoint(cfg.run_dir, attacks=["fgsm", "pgd-2"], n_examples=20, checks=False, device="cpu",
                                 log=lambda _: None)
    assert main(["report", str(cfg.run_dir)]) == 0
    text = (cfg.run_dir / "report" / "report.md").read_text()
    assert f"pgd-2 {100 * record['attacks']['pgd-2']['robust_acc']:.1f}" in text
    assert f"**{100 * record['robust_acc']:.1f}**" in text
    png = (cfg.run_dir / "report" / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not (cfg.run_dir / "report" / "feature_gap.png").exists()
    code = main(["report", str(tmp_path / "nothing")])
    assert code == 2 and "not a run folder" in capsys.readouterr().err
