"""Batching of the ``fast`` members on CPU (issue 18, item 3): a refilled working batch against a
shrinking one, and stacked targets against targets in sequence.

On one trained digits model (``benchmarks/fast_eval.py``'s cache) and its 360 test images:

* ``fast-margin`` on chunks of ``--batch`` samples, each batch shrinking as samples leave (the
  runner's batching), against all samples queued with a working batch of ``--batch`` refilled as
  samples leave (``batch=``); the points are the same (a test checks it), only the time differs;
* ``fast-targeted`` with the targets run in sequence on survivors against all (sample, target) pairs
  stacked in one batch (``stack=True``): more passes, fewer and larger batches.

Prints wall time (median of ``--repeats``; on CUDA after a synchronize), forward and backward passes per
sample. ``--device cuda`` is what ``benchmarks/gpu_check.sh`` runs on a lent GPU (never run yet).

    python benchmarks/fast_batching.py --model runs/fast_eval/digits_pgd_at --batch 32
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from typing import Callable

import torch

from robustlab.attacks import count_passes
from robustlab.attacks.fast import margin_restarts, ranked_targeted
from robustlab.data import load_dataset
from robustlab.runs.model import load_model


def measure(model: torch.nn.Module, fn: Callable[[], object], n: int, repeats: int, device: torch.device) -> str:
    times = []
    for _ in range(repeats):
        with count_passes(model) as passes:
            started = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - started)
    return (f"{statistics.median(times):7.2f} s  fwd/sample {passes.forward / n:7.1f}  "
            f"bwd/sample {passes.backward / n:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/fast_eval/digits_pgd_at")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_model(args.model, device=device)[0].eval()
    data = load_dataset("digits", "test")
    x, y = (data.images.float() / 255).to(device), data.labels.to(device)
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y, n = x[keep], y[keep], int(keep.sum())
    gen = functools.partial(torch.Generator(device=device).manual_seed, 0)
    margin = functools.partial(margin_restarts, model, eps=args.eps, norm="linf")

    def shrinking() -> None:
        for i in range(0, n, args.batch):
            margin(x[i:i + args.batch], y[i:i + args.batch], generator=gen())

    timed = functools.partial(measure, model, n=n, repeats=args.repeats, device=device)
    print(f"{n} clean-correct digits, working batch {args.batch}, L∞ eps {args.eps}, {args.device}, "
          f"{args.threads} CPU thread(s)")
    print("fast-margin, shrinking batches: " + timed(shrinking))
    refilled = timed(lambda: margin(x, y, batch=args.batch, generator=gen()))
    print("fast-margin, refilled batch:    " + refilled)
    targeted = functools.partial(ranked_targeted, model, x, y, eps=args.eps, norm="linf")
    print("fast-targeted, in sequence:     "
          + timed(lambda: targeted(stack=False, generator=gen())))
    print("fast-targeted, stacked:         " + timed(lambda: targeted(stack=True, generator=gen())))


if __name__ == "__main__":
    main()
