"""Run under torchrun by test_distributed.py: train a tiny run, then compare the ranks' weights."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from robustlab.train import Trainer  # noqa: E402
from robustlab.runs.ranks import leave  # noqa: E402
from tiny_runs import tiny_config  # noqa: E402

out, method = Path(sys.argv[1]), sys.argv[2]
trainer = Trainer(tiny_config(out, "ddp", method, **{"data.batch_size": 128, "train.epochs": 2}), log=print)
last = trainer.fit()
hashes = [None] * dist.get_world_size()
# parameters only: BN running statistics are per rank between DDP's buffer broadcasts
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in trainer.model.parameters())).hexdigest()
dist.all_gather_object(hashes, digest)
if dist.get_rank() == 0:
    (out / "result.json").write_text(json.dumps({
        "parameter_hashes": hashes, "last": last, "per_rank_batch": trainer.loader.batch_size, "steps": trainer.step,
    }))
leave()
