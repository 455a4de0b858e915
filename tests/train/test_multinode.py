"""Two torchrun "nodes" on 127.0.0.1 (c10d rendezvous, ``--nnodes 2``, one process each, gloo): a training run
keeps both nodes' weights identical and a sharded evaluation gives the single-process record.

The same job scripts as the single-node tests (``ddp_job.py``, ``ddp_eval_job.py``; their gloo teardown
notes apply); each node is its own ``torch.distributed.run`` agent, as ``srun torchrun`` starts one per node
(``docs/multinode.md``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from robustlab.runs.metrics import read_metrics

TESTS = Path(__file__).resolve().parents[1] / "helpers"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_nodes(script: str, *args: str) -> list[subprocess.CompletedProcess[str]]:
    """Launch ``script`` as node 0 and node 1 of a 2-node job and wait for both (5 minutes at most)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
             str(rank), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id",
             f"robustlab-test-{port}", "--local_addr", "127.0.0.1", "--max_restarts", "0", str(TESTS / script), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for rank in (0, 1)
    ]
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for node, result in enumerate(done):
        assert result.returncode == 0, f"node {node}: {result.stderr[-2000:]}"
    return done


def test_two_node_training_keeps_the_nodes_weights_identical(tmp_path: Path) -> None:
    two_nodes("ddp_job.py", str(tmp_path), "pgd_at", "data.batch_size=128", "train.epochs=2")
    result = json.loads((tmp_path / "result.json").read_text())["pgd_at"]
    hashes = result["parameter_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]  # one process on each node
    assert result["per_rank_batch"] == 64 and result["steps"] == 2 * (1437 // 128)
    assert [r["epoch"] for r in read_metrics(tmp_path / "pgd_at", "epoch")] == [1, 2]  # written once, by rank 0
    assert (tmp_path / "pgd_at" / "checkpoints" / "last.safetensors").is_file()


def test_two_node_sharded_evaluation_gives_the_single_process_record(tmp_path: Path) -> None:
    from ddp_eval_job import check_against_single_process

    two_nodes("ddp_eval_job.py", str(tmp_path))
    check_against_single_process(tmp_path, processes=2)
