"""What the masking probe costs a model with healthy gradients (issue 32: "nothing extra is paid, measure it").

Before any attack, ``evaluate_model`` runs :func:`robustlab.evaluate.masking.inspect_masking` on 16 probe images:
one forward and backward of the model (its margin-loss input gradient), one forward under the straight-through
mode (the calls it would replace), and, only when a call was replaced, the two gates (a forward of each model and
one more backward). On a healthy model nothing else changes (no entry, no record block; the attacks' passes are
counted as before, and the probe's are outside them). This script times the probe (median of ``--repeats``) on
trained models and sets it beside the wall time of a ``fast`` evaluation of ``--examples`` images (checks off),
both measured here, in one run.

    python benchmarks/masking_probe.py --runs runs/fast_check/digits_pgd_at runs/fast_check/digits_trades_ancra
    python benchmarks/masking_probe.py --runs RUN --data-root ../shared/data/cifar10-jpeg.tar.gz --examples 100
"""

from __future__ import annotations

import argparse
import statistics
import time

from robustlab.config import RunConfig, from_dict
from robustlab.data import fixed_subset, load_dataset
from robustlab.evaluate import evaluate_model
from robustlab.evaluate.masking import inspect_masking
from robustlab.runs.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="trained run folders")
    parser.add_argument("--data-root", default=None, help="data.root of runs whose config has none (CIFAR-10)")
    parser.add_argument("--examples", type=int, default=180)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| run | probe s (median) | replaced calls | surrogate | fast s (n) | probe / fast |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        model, meta = load_model(run, device="cpu")
        cfg: RunConfig = from_dict(RunConfig, meta["config"])
        data = load_dataset(cfg.data.name, "test", root=cfg.data.root or args.data_root, **cfg.data.options)
        data = fixed_subset(data, min(args.examples, len(data.labels)), seed=0)
        x, y = data.images[:16].float() / 255, data.labels[:16]
        eps = float(cfg.method.attack.eps)
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            found = inspect_masking(model.eval(), x, y)
            times.append(time.perf_counter() - started)
        probe = statistics.median(times)
        started = time.perf_counter()
        evaluate_model(model, data, attacks=["fast"], eps=eps, batch_size=len(data.labels), device="cpu",
                       checks=False, log=lambda _: None)
        whole = time.perf_counter() - started
        replaced = ", ".join(r["call"] for r in found.report.get("replaced", [])) or "none"
        print(f"| {run} | {probe:.3f} | {replaced} | {'used' if found.surrogate is not None else 'no'} | "
              f"{whole:.1f} ({len(data.labels)}) | {probe / whole:.4f} |")


if __name__ == "__main__":
    main()
