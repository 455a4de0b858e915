"""torchrun with two CPU processes (gloo): DDP keeps the ranks identical, rank 0 alone writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from robustlab.methods import method_names
from robustlab.runs.metrics import read_metrics


def torchrun(script: str, *args: str) -> None:
    job = Path(__file__).resolve().parents[1] / "helpers" / script
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(job), *args],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_two_process_training_keeps_ranks_in_sync(tmp_path: Path) -> None:
    torchrun("ddp_job.py", str(tmp_path), "pgd_at", "data.batch_size=128", "train.epochs=2")
    result = json.loads((tmp_path / "result.json").read_text())["pgd_at"]
    hashes = result["parameter_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert result["per_rank_batch"] == 64 and result["steps"] == 2 * (1437 // 128)
    assert [r["epoch"] for r in read_metrics(tmp_path / "pgd_at", "epoch")] == [1, 2]  # written once, by rank 0
    assert (tmp_path / "pgd_at" / "checkpoints" / "last.safetensors").is_file()
    assert 0.0 <= result["last"]["clean_acc"] <= 1.0


def test_every_method_keeps_ranks_in_sync(tmp_path: Path) -> None:
    """Every listed method (plug-ins' feature-level forwards included) and AFD fine-tuning (both updates): 2 steps
    each."""
    names = method_names()
    ordered = ["natural"] + [m for m in names if m not in ("natural", "afd")] + ["afd", "afd:update=released"]
    assert "afd" in names and "pgd_at+uad" in names
    torchrun("ddp_job.py", str(tmp_path), ",".join(ordered), "data.batch_size=512", "train.epochs=1")
    result = json.loads((tmp_path / "result.json").read_text())
    assert sorted(result) == sorted(ordered)
    for method, r in result.items():
        assert r["steps"] == 1437 // 512, method
        assert len(r["parameter_hashes"]) == 2 and r["parameter_hashes"][0] == r["parameter_hashes"][1], method


def test_sharded_evaluation_gives_the_single_process_verdicts(tmp_path: Path) -> None:
    from ddp_eval_job import check_against_single_process

    torchrun("ddp_eval_job.py", str(tmp_path))
    check_against_single_process(tmp_path, processes=2)


def test_leave_frees_ddp_wrappers_in_cycles_before_the_group_is_destroyed(tmp_path: Path) -> None:
    """A one-rank gloo group: a DDP wrapper kept only by a reference cycle must be freed by ``leave()``
    while the group is still up (else it holds the group until interpreter finalization, where gloo's
    teardown can abort the process after all its work)."""
    import gc
    import weakref

    import torch
    import torch.distributed as dist

    from robustlab.runs.ranks import leave

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    was_enabled = gc.isenabled()
    gc.disable()  # only leave() may collect
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
        freed_while_up: list[bool] = []
        holder: dict[str, object] = {"ddp": ddp}
        holder["self"] = holder  # the cycle
        weakref.finalize(ddp, lambda: freed_while_up.append(dist.is_initialized()))
        del ddp, holder
        assert freed_while_up == []  # the cycle keeps it alive
        leave()
        assert freed_while_up == [True] and not dist.is_initialized()
    finally:
        if was_enabled:
            gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()
