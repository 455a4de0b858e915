"""torchrun with two CPU processes (gloo): DDP keeps the ranks identical, rank 0 alone writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustlab.train.metrics import read_metrics


def torchrun(script: str, *args: str) -> None:
    job = Path(__file__).resolve().parent / script
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(job), *args],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("method", ["pgd_at", "trades+fsr", "pgd_at+awp"])  # plug-in hook; AWP step hooks
def test_two_process_training_keeps_ranks_in_sync(tmp_path: Path, method: str) -> None:
    torchrun("ddp_job.py", str(tmp_path), method)
    result = json.loads((tmp_path / "result.json").read_text())
    hashes = result["parameter_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert result["per_rank_batch"] == 64 and result["steps"] == 2 * (1437 // 128)
    assert [r["epoch"] for r in read_metrics(tmp_path / "ddp", "epoch")] == [1, 2]  # written once, by rank 0
    assert (tmp_path / "ddp" / "checkpoints" / "last.safetensors").is_file()
    assert 0.0 <= result["last"]["clean_acc"] <= 1.0


def test_sharded_evaluation_gives_the_single_process_verdicts(tmp_path: Path) -> None:
    from ddp_eval_job import EVAL, setup

    from robustlab.evaluate import evaluate_model

    torchrun("ddp_eval_job.py", str(tmp_path))
    sharded = json.loads((tmp_path / "record.json").read_text())
    model, data = setup()
    single = evaluate_model(model, data, **EVAL, log=lambda _: None)
    assert sharded["processes"] == 2 and single["processes"] == 1
    assert sharded["per_sample"] == single["per_sample"]
    assert {k: v["robust_acc"] for k, v in sharded["attacks"].items()} == {k: v["robust_acc"] for k, v in single["attacks"].items()}
    assert sorted(p.name for p in tmp_path.glob("eval.state.rank*.json")) == ["eval.state.rank0.json", "eval.state.rank1.json"]
