"""Run under torchrun by test_distributed.py: train tiny runs, then compare the ranks' weights.

``ddp_job.py OUT METHODS [KEY=VALUE ...]``: METHODS is comma-separated, each ``METHOD`` or
``METHOD:OPTION=VALUE`` (one method option); ``afd`` is fine-tuned from the
``natural`` run of the same job (so list ``natural`` before it). Rank 0 writes ``OUT/result.json``:
per method the ranks' parameter hashes, the last epoch's record, the per-rank batch and the steps.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from tiny_runs import tiny_config  # noqa: E402

from robustlab.runs.ranks import leave  # noqa: E402
from robustlab.train import Trainer  # noqa: E402
from robustlab.train.finetune import prepare_finetune  # noqa: E402


def run_jobs(out: Path, methods: list[str], extra: dict[str, str]) -> None:
    """Train each method; rank 0 writes the result. Locals, so the DDP wrappers die before ``leave()``."""
    results = {}
    for entry in methods:  # METHOD or METHOD:KEY=VALUE (one method option)
        method, _, option = entry.partition(":")
        options = {"method.options": "{%s}" % option.replace("=", ": ")} if option else {}
        cfg = tiny_config(out, entry.replace("+", "_").replace(":", "_").replace("=", "_"), method, **extra, **options)
        trainer = prepare_finetune(cfg, out / "natural", log=print) if method == "afd" else Trainer(cfg, log=print)
        last = trainer.fit()
        hashes = [None] * dist.get_world_size()
        # parameters only: BN running statistics are per rank between DDP's buffer broadcasts
        digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in trainer.model.parameters())).hexdigest()
        dist.all_gather_object(hashes, digest)
        results[entry] = {"parameter_hashes": hashes, "last": last, "per_rank_batch": trainer.loader.batch_size,
                          "steps": trainer.step}
    if dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(results))


run_jobs(Path(sys.argv[1]), sys.argv[2].split(","), dict(arg.split("=", 1) for arg in sys.argv[3:]))
leave()
