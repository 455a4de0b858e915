"""Fault-injection trials: kill -9 ``train``, ``finetune`` and ``eval`` on digits, resume, compare.

Each trial kills its command (SIGKILL) at a seeded random moment or inside a checkpoint, atomic-file
or metrics write, reruns it until it finishes, and compares with an uninterrupted run: checkpoint
tensors bit-identical (CPU), metrics log equal (no missing or repeated epochs), evaluation verdicts
identical; every file left is read back. The engine is ``tests/helpers/faults.py`` (``tests/test_faults.py``
runs a handful of the same trials). Example:

    python benchmarks/fault_trials.py --trials 50
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))
from faults import run_trials  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="train,finetune,eval,verify,study",
                        help="comma-separated: train, finetune, eval, verify (eval --verify), study (study run)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # forked children inherit it; tiny models, many processes
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fault_trials_") as work:
        tally = run_trials(Path(work), args.trials, seed=args.seed, kinds=tuple(args.kinds.split(",")))
    print(f"trials {tally.trials}  kills {tally.kills}  resumes {tally.resumes}  mismatches {len(tally.mismatches)}  "
          f"corrupt files {len(tally.corrupt)}  temp files left {tally.temp_files_left}  "
          f"({time.monotonic() - started:.0f}s)")
    print("kills by place: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.kill_places.items())))
    for line in tally.mismatches + [f"corrupt: {p}" for p in tally.corrupt]:
        print(f"  {line}")
    return 1 if tally.mismatches or tally.corrupt else 0


if __name__ == "__main__":
    sys.exit(main())
